"""Every seed recipe under examples/recipes/, end to end, as a user runs it.

For each recipe: `ingestlayer init`, `ingestlayer secrets set`, `ingestlayer apply -f` on the
shipped file (its example URLs pointed at local servers), `ingestlayer serve`, then the recipe's
example events over HTTP; we check what arrives, signed, and that filtered events do not.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.support.chat_server import ChatServer
from tests.support.fake_slack import FakeSlack
from tests.support.processes import Cluster, Keys, Proc, wait_until
from tests.support.receiver import Receiver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

RECIPES = Path(__file__).resolve().parents[2] / "examples" / "recipes"
HOOK_SECRET = "whsec_cmVjaXBlLWhvb2stc2VjcmV0LTEyMzQ1Njc4"
CHAT_KEY = "sk-test-key"


async def set_secret(cluster: Cluster, name: str, value: str) -> None:
    await cluster.run("secrets", "set", name, "--value", value)


def write_recipe(cluster: Cluster, name: str, replacements: dict[str, str]) -> Path:
    text = (RECIPES / name).read_text()
    for old, new in replacements.items():
        assert old in text, f"{name} no longer mentions {old}"
        text = text.replace(old, new)
    path = cluster.workdir / name
    path.write_text(text)
    return path


async def dry_run(cluster: Cluster, path: Path) -> None:
    dry = await cluster.run("apply", "-f", str(path), "--dry-run")
    assert "dry run:" in dry and "create" in dry


async def start(
    cluster: Cluster, recipes: dict[str, dict[str, str]], secrets: dict[str, str]
) -> tuple[Keys, Proc]:
    """`init`, the secrets the recipes name set, each recipe (file name: its URLs replaced)
    dry-run then applied, and `serve` started and ready."""
    keys = await cluster.init_project()
    # Each command is a process of its own, a second or more on a loaded machine: only the
    # secrets these recipes name are set.
    for name, value in secrets.items():
        await set_secret(cluster, name, value)
    proc = await cluster.start("serve", ready=False)  # it starts while the files are applied
    for name, replacements in recipes.items():
        path = write_recipe(cluster, name, replacements)
        await dry_run(cluster, path)
        await cluster.run("apply", "-f", str(path))
    await proc.wait_ready(cluster.session)  # type: ignore[arg-type]
    return keys, proc


async def emit(
    cluster: Cluster, proc: Proc, keys: Keys, type_: str, payload: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    status, body = await cluster.request(
        proc, "POST", "/v1/events", key=keys.ingest, json={"type": type_, "payload": payload, **extra}
    )
    assert status in (200, 202), body
    result: dict[str, Any] = body
    return result


async def settle(cluster: Cluster, proc: Proc, keys: Keys, expected: int) -> None:
    """Wait until `expected` deliveries exist and none is still pending."""

    async def done() -> bool:
        counts = await cluster.delivery_counts(proc, keys.admin)
        finished = counts.get("delivered", 0) + counts.get("dead", 0)
        return finished >= expected and not counts.get("pending") and not counts.get("retrying")

    await wait_until(done, timeout=30, what=f"{expected} deliveries to finish")


def verified(receiver: Receiver) -> list[Any]:
    return [r.verify(HOOK_SECRET) for r in receiver.requests]


@pytest.fixture
async def cluster(tmp_path: Path, sqlite_url: str) -> Any:
    async with Cluster(tmp_path, sqlite_url) as c:
        yield c


async def test_feature_usage_to_webhook(cluster: Cluster, receiver: Receiver) -> None:
    keys, proc = await start(
        cluster,
        {"feature-usage-to-webhook.yaml": {"https://api.acme.com/hooks": receiver.url + "/hooks"}},
        {"acme-hooks": HOOK_SECRET},
    )
    await cluster.request(
        proc,
        "POST",
        "/v1/group",
        key=keys.ingest,
        json={"user_id": "u_1", "account_id": "acc_42", "traits": {"plan": "pro", "owner": "sam@acme.com"}},
    )
    await emit(
        cluster,
        proc,
        keys,
        "feature.used",
        {"user_id": "u_1", "feature": "csv.export", "count": 1, "plan": "free"},
    )
    await emit(
        cluster,
        proc,
        keys,
        "feature.used",
        {"user_id": "u_1", "feature": "csv.import", "count": 4, "plan": "free"},
    )
    await emit(
        cluster, proc, keys, "feature.used", {"user_id": "u_2", "feature": "api", "count": 9, "plan": "free"}
    )
    await settle(cluster, proc, keys, 2)
    bodies = sorted(verified(receiver), key=lambda b: b["payload"]["feature"])
    assert [b["payload"]["feature"] for b in bodies] == ["api", "csv.export"]  # csv.import filtered out
    assert bodies[1]["payload"] == {
        "user_id": "u_1",
        "feature": "csv.export",
        "count": 1,
        "plan": "free",
        "account": "acc_42",
        "owner": "sam@acme.com",
    }
    assert bodies[0]["payload"]["account"] is None  # u_2 is unknown: nulls, never a crash


async def test_feature_usage_to_slack(tmp_path: Path, sqlite_url: str) -> None:
    slack = await FakeSlack().start()
    try:
        async with Cluster(tmp_path, sqlite_url, INGESTLAYER_SLACK_API_URL=slack.api_url) as cluster:
            keys, proc = await start(
                cluster, {"feature-usage-to-slack.yaml": {}}, {"slack-main": slack.issue_token()}
            )
            for user, plan in (("u_free", "free"), ("u_pro", "pro")):
                await cluster.request(
                    proc,
                    "POST",
                    "/v1/group",
                    key=keys.ingest,
                    json={"user_id": user, "account_id": f"acc_{user}", "traits": {"plan": plan}},
                )
            await emit(
                cluster, proc, keys, "feature.used", {"user_id": "u_free", "feature": "api", "count": 3}
            )
            await emit(
                cluster, proc, keys, "feature.used", {"user_id": "u_pro", "feature": "api", "count": 3}
            )
            await emit(
                cluster,
                proc,
                keys,
                "feature.used",
                {"user_id": "u_free", "feature": "csv.import", "count": 1},
            )
            await settle(cluster, proc, keys, 1)
            (posted,) = slack.messages  # the pro user matched no destination; csv.import was filtered
            assert posted.channel == "C0ALERTS01"
            header, section, _context = posted.body["blocks"]
            assert header["text"]["text"] == "feature.used"
            fields = [f["text"] for f in section["fields"]]
            assert "*plan*\nfree" in fields and "*account*\nacc_u_free" in fields
    finally:
        await slack.stop()


async def test_user_signups_to_webhook(cluster: Cluster, receiver: Receiver) -> None:
    keys, proc = await start(
        cluster,
        {"user-signups-to-webhook.yaml": {"https://api.acme.com/hooks": receiver.url + "/hooks"}},
        {"acme-hooks": HOOK_SECRET},
    )
    await cluster.request(
        proc,
        "PUT",
        "/v1/entities/company/acme.com",
        key=keys.admin,
        json={"traits": {"name": "Acme Inc", "country": "US"}},
    )
    await cluster.request(
        proc,
        "POST",
        "/v1/identify",
        key=keys.ingest,
        json={"user_id": "u_7", "traits": {"role": "Head of Data"}},
    )
    signup = {
        "user_id": "u_7",
        "email": "ada@acme.com",
        "plan": "pro",
        "source": "marketing-site",
        "created_at": "2026-11-25T10:00:00Z",
        "ip": "203.0.113.9",
    }
    first = await emit(cluster, proc, keys, "user.signed_up", signup, idempotency_key="u_7")
    again = await emit(cluster, proc, keys, "user.signed_up", signup, idempotency_key="u_7")
    assert again == {"id": first["id"], "duplicate": True}  # one signup per user, ever
    await emit(
        cluster,
        proc,
        keys,
        "user.signed_up",
        {"user_id": "u_8", "email": "bob@gmail.com", "plan": "free", "source": "ads"},
        idempotency_key="u_8",
    )
    await settle(cluster, proc, keys, 2)
    bodies = {b["payload"]["user_id"]: b["payload"] for b in verified(receiver)}
    assert len(receiver.requests) == 2
    ada = bodies["u_7"]
    assert ada["company"] == "Acme Inc" and ada["role"] == "Head of Data" and ada["country"] == "US"
    assert "ada@acme.com" not in str(ada) and ada["email"].endswith("@acme.com")  # masked, domain kept
    assert "203.0.113.9" not in str(ada)
    assert bodies["u_8"]["company"] is None  # free mail names no company
    # The stored event is whole: masking applied only to what the destination received.
    _, stored = await cluster.request(proc, "GET", f"/v1/events/{first['id']}", key=keys.admin)
    assert stored["payload"]["email"] == "ada@acme.com"


async def test_support_escalations_to_webhook(cluster: Cluster, receiver: Receiver) -> None:
    chat = ChatServer(
        api_key=CHAT_KEY, answer=lambda body: "critical" if "outage" in str(body).lower() else "low"
    )
    await chat.start()
    try:
        keys, proc = await start(
            cluster,
            {
                "support-escalations-to-webhook.yaml": {
                    "https://api.acme.com/hooks": receiver.url + "/hooks",
                    "https://api.openai.com/v1": chat.url,
                }
            },
            {"acme-hooks": HOOK_SECRET, "openai": CHAT_KEY},
        )
        outage = {
            "ticket_id": "t_1",
            "subject": "Production outage",
            "customer_tier": "enterprise",
            "channel": "email",
            "body": "Everything is down since 09:00. Call me on +1 415 555 2671 or write to cto@bigco.com",
        }
        await emit(cluster, proc, keys, "support.ticket.created", outage, idempotency_key="t_1")
        await emit(
            cluster,
            proc,
            keys,
            "support.ticket.created",
            outage | {"ticket_id": "t_2"},
            idempotency_key="t_2",
        )
        await emit(
            cluster,
            proc,
            keys,
            "support.ticket.created",
            {
                "ticket_id": "t_3",
                "subject": "How do I export?",
                "body": "Where is the CSV button?",
                "customer_tier": "free",
                "channel": "chat",
            },
            idempotency_key="t_3",
        )
        await wait_until(lambda: _count(receiver, 2), timeout=30, what="two critical tickets")
        await asyncio.sleep(0.3)  # the low-urgency ticket must not follow
        bodies = verified(receiver)
        assert sorted(b["payload"]["ticket_id"] for b in bodies) == ["t_1", "t_2"]
        for b in bodies:
            assert b["payload"]["urgency"] == "critical"
            assert "cto@bigco.com" not in b["payload"]["body"] and "555 2671" not in b["payload"]["body"]
            assert "[EMAIL]" in b["payload"]["body"]
        # t_1 and t_2 read the same to the model: one call for both, one for t_3.
        assert chat.calls == 2
    finally:
        await chat.stop()


async def test_failed_payments_and_billing_events(cluster: Cluster, receiver: Receiver) -> None:
    keys, proc = await start(
        cluster,
        {
            "failed-payments-to-webhook.yaml": {
                "https://api.yourapp.com/usageflow/webhook": receiver.url + "/failed"
            },
            "billing-events-to-endpoint.yaml": {
                "https://api.yourapp.com/usageflow/webhook": receiver.url + "/usageflow/webhook"
            },
        },
        {"billing-hooks": HOOK_SECRET},
    )
    invoice = {
        "invoiceId": "inv_123",
        "amount": 120,
        "periodStart": "2025-03-01T00:00:00.000Z",
        "periodEnd": "2025-03-31T00:00:00.000Z",
    }
    for type_ in (
        "invoice.created",
        "invoice.paid",
        "invoice.failed",
        "subscription.suspended",
        "invoice.voided",
    ):
        payload = {"subscriptionId": "sub_9"} if type_.startswith("subscription") else invoice
        await emit(cluster, proc, keys, type_, payload)
    await settle(cluster, proc, keys, 5)
    by_path: dict[str, list[Any]] = {}
    for r in receiver.requests:
        by_path.setdefault(r.path, []).append(r.verify(HOOK_SECRET))
    assert [b["type"] for b in by_path["/failed"]] == ["invoice.failed"]
    assert by_path["/failed"][0] == {"type": "invoice.failed", "data": invoice}
    assert sorted(b["type"] for b in by_path["/usageflow/webhook"]) == [
        "invoice.created",
        "invoice.failed",
        "invoice.paid",
        "subscription.suspended",
    ]  # not invoice.voided
    assert all(set(b) == {"type", "data"} for b in by_path["/usageflow/webhook"])


async def _count(receiver: Receiver, n: int) -> bool:
    return len(receiver.requests) >= n
