"""``slack`` configuration: how to authenticate (bot token or incoming webhook) and what to post."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ingestlayer.destinations.base import MAX_TIMEOUT_SECONDS
from ingestlayer.destinations.chat import check_http_url, check_paths
from ingestlayer.destinations.shared import check_reference

DEFAULT_API_BASE = "https://slack.com/api"
API_BASE_ENV = "INGESTLAYER_SLACK_API_URL"
# Slack shows at most 10 fields in a section block.
MAX_FIELDS = 10


class SlackConfig(BaseModel):
    """Post each event to Slack.

    Two ways to authenticate, exactly one of them:

    - ``connection``: a bot token (``xoxb-…``) from the OAuth connection
      (``GET /v1/connections/slack/authorize?name=slack-main`` stores it as the secret
      ``slack-main``), or any bot token you stored yourself; posts with ``chat.postMessage``
      to ``channel``.
    - ``webhook_url``: an incoming-webhook URL (it is a credential, so a reference too); it
      posts to the channel it was created for.

    Without a ``template`` the message is a header with the event type, the event's key fields
    (``*key*`` / value; the first 10 scalar payload fields, or ``fields``), and a context line
    with the event id. With one, the rendered template is the message (Slack mrkdwn: event
    values are escaped; your own ``*bold*`` and ``<https://…|links>`` are kept).

    Example::

        destinations:
          - slack: { channel: "#alerts", connection: ref:slack-main, when: plan = "free" }
          - slack:
              channel: C0123ABCDEF
              connection: env:SLACK_BOT_TOKEN
              template: "*$event.feature* used $event.count times by $event.user_id"
              username: ingestlayer
              icon_emoji: ":bar_chart:"
          - slack:
              webhook_url: ref:slack-alerts-webhook
              fields: [email, plan, source]
    """

    model_config = ConfigDict(extra="forbid")

    connection: str | None = Field(
        default=None,
        description="Bot token reference: `ref:NAME` (the OAuth connection's secret) or `env:VAR`.",
    )
    webhook_url: str | None = Field(
        default=None,
        description="Incoming-webhook URL reference, `ref:NAME` or `env:VAR` (the URL is a credential).",
    )
    channel: str | None = Field(
        default=None,
        description="Where to post with `connection`: `#name`, `name` or a channel id (`C…`, `G…`).",
    )
    template: str | None = Field(
        default=None,
        min_length=1,
        max_length=3000,
        description="Message text with `$event.*` placeholders, as Slack mrkdwn; default: a titled block.",
    )
    fields: list[str] | None = Field(
        default=None,
        description="Payload fields the default message lists (at most 10); default: the first 10 scalars.",
    )
    username: str | None = Field(
        default=None,
        min_length=1,
        max_length=80,
        description="Display name for the post (bot tokens need the `chat:write.customize` scope).",
    )
    icon_emoji: str | None = Field(
        default=None,
        pattern=r"^:[a-z0-9_+\-']+:$",
        description="Emoji avatar such as `:bar_chart:` (bot tokens need `chat:write.customize`).",
    )
    api_base: str | None = Field(
        default=None,
        description=f"Slack Web API base URL; default `${API_BASE_ENV}` or {DEFAULT_API_BASE}.",
    )
    timeout: float = Field(
        default=10.0, gt=0, le=MAX_TIMEOUT_SECONDS, description="Seconds to wait for Slack's answer."
    )

    @field_validator("connection")
    @classmethod
    def _connection(cls, v: str | None) -> str | None:
        return None if v is None else check_reference("connection", v, "bot token")

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, v: str | None) -> str | None:
        return None if v is None else check_reference("webhook_url", v, "webhook URL")

    @field_validator("channel")
    @classmethod
    def _channel(cls, v: str | None) -> str | None:
        if v is None:
            return None
        name = v.strip()
        if not name or name == "#" or any(c.isspace() for c in name) or len(name) > 81:
            raise ValueError(
                "channel must be a channel name such as `#alerts` (no spaces, at most 80 characters) "
                "or a channel id such as `C0123ABCDEF`"
            )
        return name

    @field_validator("fields")
    @classmethod
    def _fields(cls, v: list[str] | None) -> list[str] | None:
        return check_paths("fields", v, MAX_FIELDS)

    @field_validator("api_base")
    @classmethod
    def _api_base(cls, v: str | None) -> str | None:
        return None if v is None else check_http_url("api_base", v)

    @model_validator(mode="after")
    def _mode(self) -> SlackConfig:
        if self.connection and self.webhook_url:
            raise ValueError("set either `connection` (a bot token) or `webhook_url`, not both")
        if not self.connection and not self.webhook_url:
            raise ValueError(
                "slack needs `connection: ref:NAME` (the bot token from the OAuth connection) "
                "or `webhook_url: ref:NAME` (an incoming webhook)"
            )
        if self.connection and not self.channel:
            raise ValueError('`channel` is required with `connection`, e.g. channel: "#alerts"')
        if self.webhook_url and self.channel:
            raise ValueError(
                "`channel` cannot be used with `webhook_url`: an incoming webhook always posts to the "
                "channel it was created for (use `connection` to pick channels per pipeline)"
            )
        if self.template is not None and self.fields is not None:
            raise ValueError("`fields` shapes the default message; with a `template`, leave it out")
        return self

    def resolved_api_base(self) -> str:
        return (self.api_base or os.environ.get(API_BASE_ENV) or DEFAULT_API_BASE).rstrip("/")
