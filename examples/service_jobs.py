"""The jobs the embedded service (embedded_service.py) runs: function handlers and their DAGs.

A handler can be a plain function ``fn(ctx)``: it returns a mapping of stringMap updates (or None)
and raises to fail the attempt. They live in this module, not in the script, because a task
stores its handlers by dotted path (``examples.service_jobs.fetch_orders``) and any worker,
in this process or another, must be able to import them again.
"""

from __future__ import annotations

from dagtask import RunContext, TaskTemplate, TemplateBuilder

WORK_SECONDS = 0.2
"""How long each simulated step takes: long enough to watch, short enough for a demo."""


def _work(ctx: RunContext, seconds: float = WORK_SECONDS) -> None:
    """Simulate work the engine can interrupt (timeout or cancel) instead of sleeping blindly."""
    if ctx.token.wait(seconds):
        ctx.token.raise_if_cancelled()


# ---- "Nightly sales report": two fetches in parallel, then build, then publish -------------------


def fetch_orders(ctx: RunContext) -> dict[str, str]:
    """Count yesterday's orders."""
    _work(ctx)
    ctx.log.info("Fetched orders for %s", ctx.get("day"))
    return {"orders": "42"}


def fetch_refunds(ctx: RunContext) -> dict[str, str]:
    """Count yesterday's refunds."""
    _work(ctx)
    return {"refunds": "3"}


def build_report(ctx: RunContext) -> dict[str, str]:
    """Combine both fetches: the input context is the merge of the upstreams' outputs."""
    _work(ctx)
    orders, refunds = int(ctx.get("orders")), int(ctx.get("refunds"))
    return {"report": f"{ctx.get('day')}: {orders} orders, {refunds} refunds"}


def publish_report(ctx: RunContext) -> None:
    """Publish the report (returning None passes the input context on unchanged)."""
    _work(ctx)
    ctx.log.info("Published %r", ctx.get("report"))


def sales_report() -> TaskTemplate:
    """fetch orders + fetch refunds -> build report -> publish report."""
    t = TemplateBuilder("Nightly sales report", concurrency=2)
    t.add("Fetch orders", fetch_orders, timeout=30)
    t.add("Fetch refunds", fetch_refunds, timeout=30)
    t.add("Build report", build_report, timeout=30, after=["Fetch orders", "Fetch refunds"])
    t.add("Publish report", publish_report, timeout=30, after=["Build report"])
    return t.build()


# ---- "Sync inventory": its first step fails once, and the engine retries it on its own ----------


def connect_warehouse(ctx: RunContext) -> dict[str, str]:
    """Fail the first attempt, as a flaky network would; ``ctx.run_time`` counts attempts."""
    _work(ctx)
    if ctx.run_time == 1:
        raise ConnectionError(f"warehouse {ctx.get('warehouse')} did not answer (simulated)")
    return {"session": f"{ctx.get('warehouse')}-session-{ctx.run_time}"}


def sync_stock(ctx: RunContext) -> dict[str, str]:
    """Sync the stock levels over the session the previous step opened."""
    _work(ctx)
    return {"synced_items": "128"}


def inventory_sync() -> TaskTemplate:
    """connect (1 automatic retry) -> sync."""
    t = TemplateBuilder("Sync inventory")
    t.add("Connect to warehouse", connect_warehouse, timeout=30, retry_count=1)
    t.add("Sync stock levels", sync_stock, timeout=60, after=["Connect to warehouse"])
    return t.build()


# ---- "Make thumbnails": one subtask per image (fan-out over listMap.images) -------------------


def list_images(ctx: RunContext) -> None:
    """Check there is something to do; the images come from the task's listMap."""
    _work(ctx, 0.05)
    ctx.log.info("%d image(s) to resize", len(ctx.list_map["images"]))


def resize_image(ctx: RunContext) -> dict[str, str]:
    """Resize this copy's image: ``ctx.get("image", "images")`` is its element of the list."""
    image = ctx.get("image", "images")
    _work(ctx)
    # One key per image: the copies' outputs are merged downstream, and one key with different
    # values would be a context conflict (error 20002).
    return {f"thumbnail.{image}": f"thumbs/{image}"}


def collect_thumbnails(ctx: RunContext) -> dict[str, str]:
    """Count the thumbnails the parallel copies made."""
    made = [key for key in ctx.string_map if key.startswith("thumbnail.")]
    return {"thumbnails": str(len(made))}


def thumbnails() -> TaskTemplate:
    """list images -> resize (one PARALLEL copy per image) -> collect."""
    t = TemplateBuilder("Make thumbnails", concurrency=3)
    t.add("List images", list_images, timeout=10)
    t.add("Resize image", resize_image, timeout=30, split_key="images", after=["List images"])
    t.add("Collect thumbnails", collect_thumbnails, timeout=10, after=["Resize image"])
    return t.build()
