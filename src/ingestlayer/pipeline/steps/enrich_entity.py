"""``enrich.entity`` (ENR): look a user up in the entity store and attach what you need.

``user_id`` → the user entity → its account (the user's ``account_id`` trait, set by
``POST /v1/group``) → attaches ``account`` (the account id), and any other trait by name, taken
from the account first and then from the user.

Example::

    steps:
      - enrich.entity: { from: user_id, entity: user, attach: [account, plan, owner] }

A missing user or account, or a trait neither has, leaves the attached fields null and says why
in the trace. Fields the
sender already set are kept unless ``overwrite: true``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from ingestlayer.pipeline.event import Drop, PipelineEvent, StepConfig, StepContext
from ingestlayer.pipeline.paths import get_path, set_path


class EnrichEntityConfig(StepConfig):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    from_: str = Field(default="user_id", alias="from", description="Payload path holding the entity id.")
    entity: str = Field(default="user", description="The entity kind to look up.")
    attach: list[str] = Field(
        default_factory=lambda: ["account", "plan", "owner"],
        min_length=1,
        description="Fields to attach: `account` is the account id; other names are traits "
        "(account first, then user).",
    )
    via: str = Field(default="account_id", description="The trait on the entity that names its account.")
    account_entity: str = Field(default="account", description="The account's entity kind.")
    into: str | None = Field(default=None, description="Attach under this key instead of at the top level.")
    overwrite: bool = Field(default=False, description="Replace values the sender already set.")


class EnrichEntity:
    name: ClassVar[str] = "enrich.entity"
    kind: ClassVar[str] = "ENR"
    # Waits on a database or a provider: the router runs such events concurrently.
    performs_io: ClassVar[bool] = True
    config_model: ClassVar[type[BaseModel]] = EnrichEntityConfig

    def __init__(self, config: EnrichEntityConfig) -> None:
        self.config = config

    async def __call__(self, event: PipelineEvent, ctx: StepContext) -> PipelineEvent | Drop:
        cfg = self.config
        if ctx.services is None:
            raise RuntimeError("enrich.entity needs the entity store")
        entity_id = get_path(event.payload, cfg.from_)
        user: dict[str, Any] | None = None
        account: dict[str, Any] | None = None
        account_id: Any = None
        if entity_id is None or isinstance(entity_id, (dict, list)):
            ctx.notes.append(f"no {cfg.from_} in the event")
        else:
            user = await ctx.services.entities.get(ctx.project_id, cfg.entity, str(entity_id))
            if user is None:
                ctx.notes.append(f"{cfg.entity} {entity_id} not found")
            else:
                account_id = user.get(cfg.via)
                if account_id is None:
                    ctx.notes.append(f"{cfg.entity} {entity_id} has no {cfg.via}")
                else:
                    account = await ctx.services.entities.get(
                        ctx.project_id, cfg.account_entity, str(account_id)
                    )
                    if account is None:
                        ctx.notes.append(f"{cfg.account_entity} {account_id} not found")
        unknown: list[str] = []
        for name in cfg.attach:
            if name == "account":
                value = account_id
            else:
                value = (account or {}).get(name)
                if value is None:
                    value = (user or {}).get(name)
                if value is None and user is not None:
                    unknown.append(name)
            path = f"{cfg.into}.{name}" if cfg.into else name
            if not cfg.overwrite and get_path(event.payload, path) is not None:
                continue
            set_path(event.payload, path, value)
        if unknown:
            # Otherwise a misspelt trait (`attach: [plna]`) or one never set reads as a plain null.
            where = f"{cfg.account_entity} {account_id} or " if account is not None else ""
            ctx.notes.append(f"not found on {where}{cfg.entity} {entity_id}: {', '.join(unknown)}")
        return event

    def summary(self) -> str:
        # As on the recipe card: "user → account · plan · owner".
        return f"{self.config.entity} → " + " · ".join(self.config.attach)
