"""``slack``: ``chat.postMessage`` with a bot token, or an incoming webhook.

How Slack's answers become outcomes:

- bot token (Web API): HTTP 200 with ``{"ok": true}`` is delivered. ``{"ok": false, "error"}``:
  ``ratelimited`` retries after ``Retry-After``; errors retrying cannot fix (``channel_not_found``,
  ``not_in_channel``, ``invalid_auth``, ``token_revoked``, ``missing_scope``, ``is_archived``,
  ``msg_too_long``, ``msg_blocks_too_long``, ``invalid_blocks``, …) are dead at once with Slack's
  code and a hint; Slack's own failures (``internal_error``, ``fatal_error``,
  ``service_unavailable``), a free workspace's ``message_limit_exceeded`` and unknown codes
  retry. HTTP 429 retries after ``Retry-After``; 5xx retries.
- incoming webhook: 200 ``ok`` is delivered; 400/403/404/410 (``invalid_payload``,
  ``no_service``, ``channel_not_found``, ``channel_is_archived``, ``action_prohibited``, …) are
  dead with Slack's text; 429 and 5xx retry.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel

from ingestlayer.destinations.base import Outcome, SendContext, SendRequest
from ingestlayer.destinations.chat import (
    Redactor,
    Reply,
    first_line,
    held_url_refused,
    is_transient_status,
    post,
    reply_outcome,
)
from ingestlayer.destinations.slack.blocks import build_message
from ingestlayer.destinations.slack.config import SlackConfig

# Web API error codes that retrying cannot fix, with what to do about them.
PERMANENT_ERRORS: dict[str, str] = {
    "channel_not_found": "the channel does not exist, or the bot cannot see it "
    "(invite the bot to private channels)",
    "not_in_channel": "the bot is not in this channel: invite it (/invite @app) or grant chat:write.public",
    "is_archived": "the channel is archived",
    "channel_is_archived": "the channel is archived",
    "invalid_auth": "Slack does not accept this token: reconnect Slack",
    "not_authed": "no token was sent",
    "account_inactive": "the token belongs to a deactivated user or a deleted workspace",
    "token_revoked": "the token was revoked (the app was uninstalled?): reconnect Slack",
    "token_expired": "the token expired: reconnect Slack",
    "no_permission": "the token may not post here",
    "missing_scope": "the token lacks a scope it needs (chat:write, chat:write.public for public "
    "channels the bot is not in, chat:write.customize for username/icon_emoji)",
    "not_allowed_token_type": "this token type cannot post messages: use a bot token (xoxb-)",
    "msg_too_long": "the message is too long",
    "no_text": "the message has no text",
    "invalid_blocks": "Slack rejected the message blocks",
    "invalid_blocks_format": "Slack rejected the message blocks",
    "too_many_attachments": "too many attachments",
    "restricted_action": "a workspace preference prevents posting in this channel",
    "restricted_action_read_only_channel": "the channel is read-only",
    "restricted_action_thread_only_channel": "the channel only allows thread replies",
    "restricted_action_non_threadable_channel": "the channel does not allow this message",
    "posting_to_general_channel_denied": "only admins may post in the general channel",
    "ekm_access_denied": "administrators have suspended posting (EKM)",
    "team_access_not_granted": "the token has no access to this workspace",
    "enterprise_is_restricted": "the method cannot be called from an Enterprise",
    "org_login_required": "the workspace is being migrated to an Enterprise org",
    "two_factor_setup_required": "two-factor setup is required",
    "as_user_not_supported": "as_user is not supported for this token",
    "duplicate_channel_not_found": "the channel does not exist",
    "invalid_arguments": "Slack rejected the request's arguments",
    "invalid_arg_name": "Slack rejected an argument name",
    "invalid_charset": "Slack rejected the request's charset",
    "invalid_form_data": "Slack rejected the request body",
    "invalid_post_type": "Slack rejected the request's content type",
    "missing_post_type": "the request had no content type",
    "method_deprecated": "the method is deprecated",
    "deprecated_endpoint": "the endpoint is deprecated",
    "access_denied": "access denied",
    "team_added_to_org": "the workspace joined an Enterprise org: reconnect Slack",
    # The same message is refused again however often it is sent: its size, its shape.
    "msg_blocks_too_long": "the message blocks are too long in total",
    "attachment_payload_limit_exceeded": "the message's attachments are too large",
    "too_many_contact_cards": "too many contact cards",
    "markdown_text_conflict": "markdown_text cannot be sent with blocks or text",
    "invalid_array_arg": "Slack rejected an argument passed as an array",
    "missing_file_data": "a shared file's data is missing",
    "invalid_metadata_format": "Slack rejected the message metadata's format",
    "invalid_metadata_schema": "Slack rejected the message metadata's schema",
    "metadata_too_large": "the message metadata is too large",
    "metadata_must_be_sent_from_app": "message metadata must be posted with an app token",
    # The channel, workspace or token cannot take it until someone changes a setting.
    "cannot_reply_to_message": "this message type cannot have thread replies",
    "restricted_action_thread_locked": "the thread was locked by admins",
    "messages_tab_disabled": "the app's Messages tab is disabled",
    "slack_connect_file_link_sharing_blocked": "admins blocked sharing Slack file links in Slack Connect "
    "(the message links a file and the channel is shared with another organization)",
    "slack_connect_canvas_sharing_blocked": "admins blocked sharing canvases in Slack Connect "
    "(the message links a canvas and the channel is shared with another organization)",
    "slack_connect_lists_sharing_blocked": "admins blocked sharing lists in Slack Connect "
    "(the message links a list and the channel is shared with another organization)",
    "accesslimited": "this method may not be called from ingestlayer's network (an IP allowlist?)",
    "team_not_found": "with an org-wide token, the channel must be a channel ID, not a name",
}
# message_limit_exceeded is not there: Slack documents it as "members on this team are sending
# too many messages", the high-volume message limit of free workspaces, which prevents sending
# too many messages "in a short period of time". It lifts once the workspace sends less, as a
# rate limit does, so it is retried on the schedule (Slack sends no Retry-After with it); a
# delivery that still meets it when the schedule runs out goes dead with it.
MESSAGE_LIMIT = "message_limit_exceeded"
# Retried (as are codes we do not know): Slack's own trouble, and rate limits.
TRANSIENT_ERRORS = frozenset(
    {
        "ratelimited",
        "rate_limited",
        MESSAGE_LIMIT,
        "internal_error",
        "fatal_error",
        "service_unavailable",
        "request_timeout",
    }
)
# Incoming-webhook answers (HTTP status + a short text body) that retrying cannot fix.
WEBHOOK_PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 405, 410, 413})


def classify_api_reply(reply: Reply, redact: Redactor) -> Outcome:
    """Outcome of a Web API call (``chat.postMessage``)."""
    body = reply.json()
    retry_after = reply.header_retry_after()
    if reply.status == 429:
        code = body.get("error") if isinstance(body, dict) else None
        return reply_outcome(
            reply, redact, ok=False, error=f"Slack rate limit ({code or 'HTTP 429'})", retry_after=retry_after
        )
    if reply.status >= 400 or not isinstance(body, dict) or "ok" not in body:
        permanent = not is_transient_status(reply.status) and reply.status >= 400
        what = "not a Slack Web API answer" if reply.status < 400 else f"HTTP {reply.status} from Slack"
        hint = " (check api_base)" if permanent else ""
        return reply_outcome(
            reply,
            redact,
            ok=False,
            error=f"{what}{hint}",
            retry_after=retry_after if reply.status == 503 else None,
            permanent=permanent,
        )
    if body.get("ok") is True:
        return reply_outcome(reply, redact, ok=True)
    code = str(body.get("error") or "unknown_error")
    if code in PERMANENT_ERRORS:
        error = f"{code}: {PERMANENT_ERRORS[code]}"
        metadata = body.get("response_metadata")
        details = metadata.get("messages") if isinstance(metadata, dict) else None
        if isinstance(details, list) and details:
            error += f" ({'; '.join(str(d) for d in details[:3])})"
        if isinstance(body.get("needed"), str):
            error += f" (needed: {body['needed']}; granted: {body.get('provided') or 'none'})"
        return reply_outcome(reply, redact, ok=False, error=error, permanent=True)
    if code in ("ratelimited", "rate_limited"):
        return reply_outcome(
            reply, redact, ok=False, error=f"{code}: Slack rate limit", retry_after=retry_after
        )
    if code == MESSAGE_LIMIT:
        error = f"{code}: the workspace is sending too many messages (Slack's free-plan limit; retryable)"
        return reply_outcome(reply, redact, ok=False, error=error, retry_after=retry_after)
    kind = "a Slack-side error" if code in TRANSIENT_ERRORS else "an error code ingestlayer does not know"
    return reply_outcome(reply, redact, ok=False, error=f"{code}: {kind} (retryable)")


def classify_webhook_reply(reply: Reply, redact: Redactor) -> Outcome:
    """Outcome of an incoming-webhook POST."""
    if 200 <= reply.status < 300:
        return reply_outcome(reply, redact, ok=True)
    text = first_line(reply.text(), 200)
    reason = f"HTTP {reply.status}: {text}" if text else f"HTTP {reply.status}"
    if reply.status in (429, 503):
        return reply_outcome(reply, redact, ok=False, error=reason, retry_after=reply.header_retry_after())
    permanent = reply.status in WEBHOOK_PERMANENT_STATUSES or not is_transient_status(reply.status)
    return reply_outcome(reply, redact, ok=False, error=reason, permanent=permanent)


class Slack:
    kind: ClassVar[str] = "slack"
    config_model: ClassVar[type[BaseModel]] = SlackConfig

    def __init__(self, config: SlackConfig) -> None:
        self.config = config

    def target(self) -> str:
        cfg = self.config
        if cfg.webhook_url:
            return f"slack incoming webhook ({cfg.webhook_url})"
        return f"slack {cfg.channel}"

    def message(self, event: dict[str, Any]) -> dict[str, Any]:
        cfg = self.config
        body = build_message(event, template=cfg.template, fields=cfg.fields)
        if cfg.username:
            body["username"] = cfg.username
        if cfg.icon_emoji:
            body["icon_emoji"] = cfg.icon_emoji
        return body

    async def send(self, request: SendRequest, ctx: SendContext) -> Outcome:
        cfg = self.config
        redact = Redactor()
        message = self.message(request.event)
        if cfg.webhook_url:
            try:
                url = (await ctx.resolve_secret(request.project_id, cfg.webhook_url)).strip()
            except LookupError as exc:
                return Outcome(ok=False, error=str(exc))
            redact.add_url(url)
            if not url.startswith(("https://", "http://")):
                return Outcome(
                    ok=False,
                    error=f"webhook_url ({cfg.webhook_url}) does not hold an http(s) URL",
                    permanent=True,
                )
            refused = held_url_refused(cfg.webhook_url, url)
            if refused is not None:
                return refused
            reply = await post(ctx, url, message, timeout=cfg.timeout, redact=redact)
            return reply if isinstance(reply, Outcome) else classify_webhook_reply(reply, redact)
        assert cfg.connection is not None and cfg.channel is not None  # the config guarantees it
        try:
            token = (await ctx.resolve_secret(request.project_id, cfg.connection)).strip()
        except LookupError as exc:
            return Outcome(ok=False, error=str(exc))
        redact.add(token)
        redact.add_url_credentials(cfg.resolved_api_base())
        if not token or any(c.isspace() for c in token):
            return Outcome(
                ok=False, error=f"connection ({cfg.connection}) does not hold a Slack token", permanent=True
            )
        reply = await post(
            ctx,
            f"{cfg.resolved_api_base()}/chat.postMessage",
            {"channel": cfg.channel, **message},
            timeout=cfg.timeout,
            redact=redact,
            headers={"Authorization": f"Bearer {token}"},
        )
        return reply if isinstance(reply, Outcome) else classify_api_reply(reply, redact)
