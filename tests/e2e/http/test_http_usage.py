"""Money over HTTP: a request or a batch past its tenant's budget is a 402 with the facts (and
writes nothing), and GET /v1/usage shows a tenant's key its own usage, an admin key every
tenant's."""

from __future__ import annotations

import json

from producer.core.tenant_policies import set_policy
from producer.jobs import list_jobs

PRICES = {"VIDEOQUEUE_PRICES": json.dumps({"sora": {"usd_per_second": 0.1}})}
REQUEST = {"prompt": "a cat", "size": "64x48", "seconds": "2"}  # 0.2 USD


def test_a_request_or_a_batch_past_the_budget_is_a_402_with_the_facts_and_writes_nothing(
    make_gateway,
):
    gw = make_gateway(workers=0, env=PRICES)
    s = gw.pipeline.settings
    set_policy("acme", {"budget_usd": 0.3, "budget_period": "day"}, s)
    with gw.client("acme") as http:
        assert http.post("/v1/videos", json=REQUEST).status_code == 200
        refused = http.post("/v1/videos", json=REQUEST)
        assert refused.status_code == 402, refused.text
        error, budget = refused.json()["error"], refused.json()["budget"]
        assert (error["code"], error["type"]) == ("budget_exceeded", "insufficient_quota")
        assert "acme" in error["message"] and "0.3" in error["message"]
        assert budget == {"tenant": "acme", "budget_usd": 0.3, "period": "day", "spent_usd": 0.0,
                          "reserved_usd": 0.2, "requested_usd": 0.2}  # fmt: skip
        batch = http.post("/v1/batches", json={"requests": [REQUEST, REQUEST]})
        assert batch.status_code == 402 and batch.json()["budget"]["requested_usd"] == 0.4
        assert len(list_jobs(tenant="acme", settings=s)[0]) == 1


def test_usage_shows_a_tenant_its_own_and_an_admin_every_tenants(make_gateway):
    gw = make_gateway(workers=0, env=PRICES)
    set_policy("acme", {"budget_usd": 5}, gw.pipeline.settings)
    gw.key("ops", admin=True)
    with gw.client("acme") as a, gw.client("globex") as b, gw.client("ops") as admin:
        a.post("/v1/videos", json=REQUEST)
        b.post("/v1/videos", json=REQUEST)
        b.post("/v1/videos", json=REQUEST)
        mine = a.get("/v1/usage").json()
        assert mine["object"] == "list" and [u["tenant"] for u in mine["data"]] == ["acme"]
        (acme,) = mine["data"]
        assert (acme["reserved_usd"], acme["charged_usd"], acme["remaining_usd"]) == (0.2, 0, 4.8)
        # A tenant's key names only itself, whatever it asks for.
        assert [u["tenant"] for u in a.get("/v1/usage?tenant=globex").json()["data"]] == ["acme"]
        every = {u["tenant"]: u for u in admin.get("/v1/usage").json()["data"]}
        assert every.keys() == {"acme", "globex"}
        assert every["globex"]["reserved_usd"] == 0.4 and every["globex"]["remaining_usd"] is None
        assert [u["tenant"] for u in admin.get("/v1/usage?tenant=globex").json()["data"]] == [
            "globex"]  # fmt: skip
        assert a.get("/v1/usage?since=not-a-day").status_code == 400
