"""A whole SAMed-2 session in a fresh process (its tensors alone count in the peak): peak RSS, the
cache budget, scroll then click."""
import multiprocessing
from pathlib import Path
from typing import List

import numpy as np

from samed2.choices import PropagationOptions
from samed2.device import pick_device
from samed2.embedding_cache import EmbeddingCache
from samed2.session import DEFAULT_CACHE_BYTES, Session
from samed2.volume import Volume
from samed2_tools.bench.common import (
    GB,
    RSS_LIMIT,
    SAMED2,
    Bench,
    Clock,
    Measure,
    PartTimes,
    Row,
    Settings,
    click_target,
    median,
    skipped_row,
)
from samed2_tools.bench.phantom import liver_point, liver_slice, phantom_ct, random_bank, sized_model

try:
    import resource
except ImportError:  # Windows
    resource = None



def peak_rss_bytes() -> int:
    """This process's peak RSS. Linux: VmHWM, which (unlike ru_maxrss) does not inherit the parent's
    peak through fork + exec."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # macOS: bytes


def tracked_bytes(session: Session, obj_id: int) -> tuple:
    """(bytes, slices) of an object's per-slice state: memories, pointers, logits, masks."""
    obj = session.objects[obj_id]
    tensors = [t for m in [*obj.cond.values(), *obj.non_cond.values()] for t in (m.features, m.pos, m.obj_ptr)]
    tensors += list(obj.logits.values())
    total = sum(t.numel() * t.element_size() for t in tensors) + sum(m.nbytes for m in obj.masks.values())
    return total, len(set(obj.logits) | set(obj.masks))


def cache_keeps_budget(session: Session) -> bool:
    """The session's cache is within its budget, and a cache with room for 4.5 of its embeddings
    keeps exactly the 4 most recent when given all of them."""
    cached = [i for i in range(session.num_slices) if i in session.features.cache]
    small = EmbeddingCache(int(session.features.cache.item_bytes * 4.5))
    for i in cached:
        small.put(i, session.features.cache.get(i, "cpu"))
    return (session.features.cache.nbytes <= session.features.cache.budget_bytes and small.nbytes <= small.budget_bytes
            and len(small) == min(4, len(cached)))


def measure_session(settings: Settings, device_name: str, precision: str) -> dict:
    """Run in a fresh process: a SAMed-2 session with a full confidence bank on a synthetic CT under
    the default cache budget."""
    device = pick_device(device_name)
    clock, shape = Clock(device), settings.volume_shape
    volume = Volume(phantom_ct(shape, settings.seed), np.diag([0.8, 0.8, 1.5, 1.0]), modality="CT")
    model, center = sized_model(SAMED2, settings.image_size, seed=settings.seed), liver_slice(shape)
    bank = random_bank(settings.bank_entries, model, settings.seed, device)
    out = {}
    with Session(volume, model, axis=2, preset="soft_tissue", device=device_name,
                 cache_bytes=DEFAULT_CACHE_BYTES, bank=bank, precision=precision) as session:
        out["precompute_s"], _ = clock.time(lambda: (session.precompute(center, settings.precompute_radius),
                                                     session.wait_idle()))
        # object 1 is propagated below; 3 and 4 are new objects on the neighbouring slices
        point = [(*liver_point(shape), True)]
        clicks = [(obj_id, center + offset, point) for obj_id, offset in ((1, 0), (3, -1), (4, 1))]
        out.update(scroll_then_click(session, model, clock, clicks, settings.precompute_radius))
        cold = center - 2 * (settings.precompute_radius + 4)
        out["cold_click_s"], _ = clock.time(session.add_prompt, 2, cold, [(*liver_point(shape), True)])
        options = PropagationOptions("up", stop=center + settings.propagate_slices, stop_after_absent=0)
        steps = list(session.propagate([1], options))
        session.wait_idle()
        out["peak_rss_bytes"] = peak_rss_bytes()
        out["state_bytes"], out["state_slices"] = tracked_bytes(session, 1)
        out.update(cache_bytes=session.features.cache.nbytes, cache_budget=session.features.cache.budget_bytes,
                   cached_slices=len(session.features.cache), slices=session.num_slices, propagated=len(steps),
                   cache_ok=cache_keeps_budget(session))
    return out


def scroll_then_click(session: Session, model, clock: Clock, clicks, radius: int) -> dict:
    """For each (object, slice, points): scroll there (the session prepares the slice in the background,
    waited for), then click. The median click, each click's decoder time, and the encoder and bank
    attention runs inside the clicks (none is the target)."""
    seconds, decoder, encodes, attends = [], [], 0, 0
    for obj_id, index, points in clicks:
        session.precompute(index, radius)
        session.wait_idle()
        parts = PartTimes(model, clock)
        seconds.append(clock.time(session.add_prompt, obj_id, index, points)[0])
        decoder.append(parts.finish()["sam_mask_decoder"])
        encodes, attends = encodes + parts.calls["image_encoder"], attends + parts.calls["memory_attention"]
    return {"warm_click_s": median(seconds), "warm_clicks_s": seconds, "warm_click_decoder_s": decoder,
            "warm_click_encodes": encodes, "warm_click_attends": attends}


def session_rows(b: Bench) -> List[Row]:
    s = b.settings
    if resource is None:
        why = "skipped: peak RSS needs the resource module (Linux, macOS)"
        return [skipped_row("peak_rss", "Peak RSS of a CT session", why),
                skipped_row("scroll_click", "Scroll, then click", why)]
    b.log(f"session on a {'x'.join(map(str, s.volume_shape[::-1]))} CT in a fresh process")
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        out = pool.apply(measure_session, (s, str(b.device), b.precision))
    return [rss_row(b, out), scroll_row(b, out)]


def rss_row(b: Bench, out: dict) -> Row:
    per_slice = out["state_bytes"] / max(out["state_slices"], 1)
    projected = (out["peak_rss_bytes"] + out["cache_budget"] - out["cache_bytes"]
                 + per_slice * (out["slices"] - out["state_slices"]))
    peak = out["peak_rss_bytes"]
    ni, nj, nk = b.settings.volume_shape[::-1]
    return Row("peak_rss", f"Peak RSS, {ni}x{nj}x{nk} CT session (SAMed-2, {b.settings.image_size} px, "
                           f"{b.settings.bank_entries}-entry bank): measured part-way, full session projected",
               Measure(peak / GB, "GB", f"measured: {out['cached_slices']} slices cached, "
                                        f"{out['propagated']} propagated"),
               Measure(projected / GB, "GB", "projected, not measured: measured peak + the rest of the cache "
                                             "budget + every slice tracked (one object)"),
               RSS_LIMIT / max(projected, peak), "limit / max(measured, projected) (headroom)",
               "< 6 GB; cache within budget", max(projected, peak) < RSS_LIMIT and out["cache_ok"],
               details={"cache_gb": out["cache_bytes"] / GB, "cache_budget_gb": out["cache_budget"] / GB,
                        "cache_within_budget": out["cache_ok"], "state_mb_per_slice": per_slice / 1e6})


def scroll_row(b: Bench, out: dict) -> Row:
    warm, cold, target = out["warm_click_s"], out["cold_click_s"], click_target(b.device)
    prepared = out["warm_click_encodes"] == 0 and out["warm_click_attends"] == 0
    return Row("scroll_click", f"Scroll, then click, with the {b.settings.bank_entries}-entry bank "
                               "(background encoding, bank choice and attention)",
               Measure(warm, "s", f"Session.add_prompt on a slice prepared in the background "
                                  f"(median of {len(out['warm_clicks_s'])} slices)"),
               Measure(cold, "s", "the same click on a slice not yet encoded (cold)"),
               cold / warm, "cold / warm (speed-up)",
               f"no encoder or bank attention in the click; <= {target * 1000:.0f} ms", prepared and warm <= target,
               details={"encoder_runs_in_warm_click": out["warm_click_encodes"],
                        "bank_attention_runs_in_warm_click": out["warm_click_attends"],
                        "warm_clicks_s": out["warm_clicks_s"], "warm_click_decoder_s": out["warm_click_decoder_s"],
                        "background_precompute_s": out["precompute_s"]})
