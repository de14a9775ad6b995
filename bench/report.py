#!/usr/bin/env python3
"""bench/report.py: turns bench/run's raw per-run results (JSON lines) into the results table.

Medians over rounds per (scenario, load, proxy); a "sluice/Envoy" ratio row per scenario and load
with the issue's targets and a PASS/FAIL verdict. Writes Markdown and JSON, prints the Markdown.
Standard library only.
"""
import argparse
import json
import statistics
import sys

MIB = 1024.0  # VmHWM/VmRSS are in KiB

# Targets of issue 6. Ratios are sluice / Envoy.
EDGE = {"cpu_ratio_max": 0.5, "rps_ratio_min": 1.6, "p99_ratio_max": 1.0}
TARGETS = {
    "edge-http": EDGE,
    "edge-https": EDGE,
    "edge-h2": EDGE,
    "guide-path": {"rps_ratio_min": 1.6},
    "authz": {"rps_min": 40000, "p99_us_max_exclusive": 2000},
    # The issue says 15 MB: read strictly, 15 000 000 bytes (14.3 MiB).
    "footprint": {"peak_rss_bytes_max": 15_000_000, "first_200_ms_max": 30.0},
}
METRICS = ["rps", "p50_us", "p99_us", "cpu_us_per_req", "peak_rss_kb", "errors", "requests",
           "first_200_ms", "idle_rss_kb", "startup_cpu_ms", "client_cpu_us_per_req"]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def aggregate(raw):
    groups = {}
    for r in raw:
        key = (r["scenario"], r["load"], r["proxy"])
        groups.setdefault(key, []).append(r)
    rows = []
    for (scen, load, proxy), runs in groups.items():
        good = [r for r in runs if "failed" not in r]
        row = {"scenario": scen, "load": load, "proxy": proxy, "runs": len(runs),
               "failed_runs": len(runs) - len(good),
               "failures": sorted({r["failed"] for r in runs if "failed" in r})}
        for m in METRICS:
            vals = [r.get(m) for r in good]
            if any(v is not None for v in vals):
                row[m] = median(vals)
        rps = [r["rps"] for r in good if r.get("rps") is not None]
        if len(rps) > 1:
            row["rps_min"], row["rps_max"] = min(rps), max(rps)
        rows.append(row)
    return rows


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def verdicts(rows):
    """Ratio rows and target checks, per (scenario, load)."""
    by = {(r["scenario"], r["load"], r["proxy"]): r for r in rows}
    out = []
    seen = []
    for r in rows:
        k = (r["scenario"], r["load"])
        if k not in seen:
            seen.append(k)
    for scen, load in seen:
        s = by.get((scen, load, "sluice"))
        e = by.get((scen, load, "envoy"))
        t = TARGETS.get(scen, {})
        v = {"scenario": scen, "load": load, "targets": t, "failing": [], "verdict": "n/a"}
        if s and e and s.get("rps") is not None and e.get("rps") is not None:
            v["rps_ratio"] = ratio(s.get("rps"), e.get("rps"))
            v["p50_ratio"] = ratio(s.get("p50_us"), e.get("p50_us"))
            v["p99_ratio"] = ratio(s.get("p99_us"), e.get("p99_us"))
            v["cpu_ratio"] = ratio(s.get("cpu_us_per_req"), e.get("cpu_us_per_req"))
            v["rss_ratio"] = ratio(s.get("peak_rss_kb"), e.get("peak_rss_kb"))
        if s and e and scen == "footprint" and s.get("first_200_ms") is not None and e.get("first_200_ms") is not None:
            v["first_200_ratio"] = ratio(s.get("first_200_ms"), e.get("first_200_ms"))
            v["rss_ratio"] = ratio(s.get("peak_rss_kb"), e.get("peak_rss_kb"))
        fail = v["failing"]
        checked = False
        if "rps_ratio_min" in t:
            if v.get("rps_ratio") is not None:
                checked = True
                if v["rps_ratio"] < t["rps_ratio_min"]:
                    fail.append("req/s")
        if "cpu_ratio_max" in t and v.get("cpu_ratio") is not None:
            checked = True
            if v["cpu_ratio"] > t["cpu_ratio_max"]:
                fail.append("CPU/req")
        if "p99_ratio_max" in t and v.get("p99_ratio") is not None:
            checked = True
            if v["p99_ratio"] > t["p99_ratio_max"]:
                fail.append("p99")
        if s and "rps_min" in t and s.get("rps") is not None:
            checked = True
            if s["rps"] < t["rps_min"]:
                fail.append("checks/s")
            if s.get("p99_us") is None or s["p99_us"] >= t["p99_us_max_exclusive"]:
                fail.append("p99")
        if s and "peak_rss_bytes_max" in t and s.get("peak_rss_kb") is not None:
            checked = True
            if s["peak_rss_kb"] * 1024 > t["peak_rss_bytes_max"]:
                fail.append("peak RSS")
            if s.get("first_200_ms") is None or s["first_200_ms"] > t["first_200_ms_max"]:
                fail.append("first 200")
        if s and s.get("failed_runs") and s["failed_runs"] == s["runs"]:
            fail.append("sluice failed")
            checked = True
        if checked:
            v["verdict"] = "FAIL" if fail else "PASS"
        out.append(v)
    return out


def target_text(scen):
    t = TARGETS.get(scen, {})
    if scen.startswith("edge-"):
        return "CPU ≤0.5×, req/s ≥1.6×, p99 ≤1×"
    if scen == "guide-path":
        return "req/s ≥1.6×"
    if scen == "authz":
        return "≥40 000/s, p99 <2 ms"
    if scen == "footprint":
        return "peak RSS ≤15 MB (14.3 MiB), first 200 ≤30 ms"
    return ", ".join(f"{k}={v}" for k, v in t.items())


def f_num(v, digits=0):
    if v is None:
        return "–"
    if digits == 0:
        return f"{v:,.0f}".replace(",", " ")
    return f"{v:.{digits}f}"


def f_cpu_ms(v):
    # /proc/<pid>/stat counts whole clock ticks (10 ms).
    if v is None:
        return "–"
    return "<10" if v < 10 else f_num(v)


def f_ratio(v):
    return "–" if v is None else f"{v:.2f}×"


def f_ms(us):
    return "–" if us is None else f"{us / 1000:.2f}"


def f_mib(kb):
    return "–" if kb is None else f"{kb / MIB:.1f}"


def markdown(machine, rows, checks):
    m = machine
    v = m.get("versions", {})
    lines = []
    mode = "quick mode (1 round, short runs)" if m.get("quick") else f"{m.get('rounds')} rounds"
    lines.append("# sluice vs Envoy: benchmark results")
    lines.append("")
    lines.append(f"{m.get('date')}: {mode}, {m.get('duration_s')} s per measured run, medians over rounds. "
                 f"Produced by `bench/run` (see bench/README.md).")
    lines.append("")
    lines.append(f"- machine: {m.get('nproc')} CPUs, {m.get('cpu_model')}, {m.get('kernel')}; "
                 f"load average before/after: {m.get('load_average_before')} / {m.get('load_average_after')}")
    lines.append(f"- versions: sluice {v.get('sluice')} ({v.get('sluice_commit')}), Envoy {v.get('envoy')}, "
                 f"wrk {v.get('wrk')}, {v.get('h2load')}, nginx {v.get('nginx')}")
    lines.append(f"- CPU pinning: {m.get('pinning')}; proxies run with `--concurrency 2`")
    lines.append("")
    by = {(r["scenario"], r["load"], r["proxy"]): r for r in rows}
    chk = {(c["scenario"], c["load"]): c for c in checks}
    order = []
    for r in rows:
        k = (r["scenario"], r["load"])
        if k not in order:
            order.append(k)

    lines.append("| scenario | load | proxy | req/s | p50 ms | p99 ms | proxy CPU µs/req | peak RSS MiB | errors | target | verdict |")
    lines.append("|---|---|---|--:|--:|--:|--:|--:|--:|---|---|")
    for scen, load in order:
        if scen == "footprint":
            continue
        first = True
        proxies = [p for p in ("sluice", "envoy", "no proxy") if (scen, load, p) in by]
        proxies += [r["proxy"] for r in rows if (r["scenario"], r["load"]) == (scen, load) and r["proxy"] not in proxies]
        c = chk.get((scen, load), {})
        for p in proxies:
            r = by[(scen, load, p)]
            name = {"sluice": "sluice", "envoy": "Envoy"}.get(p, p)
            if r["failed_runs"] == r["runs"]:
                cells = [f"FAILED ({r['failures'][0][:80]})" if r["failures"] else "FAILED", "", "", "", "", ""]
            else:
                err = r.get("errors")
                cells = [f_num(r.get("rps")), f_ms(r.get("p50_us")), f_ms(r.get("p99_us")),
                         f_num(r.get("cpu_us_per_req"), 1), f_mib(r.get("peak_rss_kb")),
                         f_num(err) + (f" ({r['failed_runs']} runs failed)" if r["failed_runs"] else "")]
            if scen == "authz" and r.get("client_cpu_us_per_req") is not None:
                name += f" (client: {r['client_cpu_us_per_req']:.1f} µs CPU/check)"
            tgt, ver = "", ""
            if scen == "authz" and p == "sluice":
                tgt, ver = target_text(scen), c.get("verdict", "")
            lines.append(f"| {scen if first else ''} | {load if first else ''} | {name} | " + " | ".join(cells)
                         + f" | {tgt} | {ver}{(' (' + ', '.join(c.get('failing', [])) + ')') if ver == 'FAIL' else ''} |")
            first = False
        if scen != "authz" and ("sluice" in proxies and "envoy" in proxies):
            ver = c.get("verdict", "n/a")
            failing = c.get("failing", [])
            lines.append(f"| | | **sluice/Envoy** | {f_ratio(c.get('rps_ratio'))} | {f_ratio(c.get('p50_ratio'))} | "
                         f"{f_ratio(c.get('p99_ratio'))} | {f_ratio(c.get('cpu_ratio'))} | {f_ratio(c.get('rss_ratio'))} | | "
                         f"{target_text(scen)} | **{ver}**{(' (' + ', '.join(failing) + ')') if failing else ''} |")
    lines.append("")

    fp = [k for k in order if k[0] == "footprint"]
    if fp:
        lines.append("Footprint: the guide's front config (STATIC copy, bench/configs/guide-front.yaml) started "
                     "with its sidecars, authz and services already up; time from exec to the first proxied 200 "
                     "(ext_authz check + sidecar hop), then RSS after 2 s idle.")
        lines.append("")
        lines.append("| proxy | start → first proxied 200 ms | idle RSS MiB | peak RSS MiB | CPU ms to first 200 + 2 s idle | target | verdict |")
        lines.append("|---|--:|--:|--:|--:|---|---|")
        for scen, load in fp:
            c = chk.get((scen, load), {})
            for p in ("sluice", "envoy"):
                r = by.get((scen, load, p))
                if not r:
                    continue
                name = {"sluice": "sluice", "envoy": "Envoy"}[p]
                if r["failed_runs"] == r["runs"]:
                    ver = c.get("verdict", "") if p == "sluice" else ""
                    lines.append(f"| {name} | FAILED ({(r['failures'] or [''])[0][:80]}) | | | | "
                                 f"{target_text(scen) if p == 'sluice' else ''} | {ver} |")
                    continue
                tgt, ver = ("", "")
                if p == "sluice":
                    tgt = target_text(scen)
                    ver = c.get("verdict", "") + ((" (" + ", ".join(c["failing"]) + ")") if c.get("failing") else "")
                lines.append(f"| {name} | {f_num(r.get('first_200_ms'), 1)} | {f_mib(r.get('idle_rss_kb'))} | "
                             f"{f_mib(r.get('peak_rss_kb'))} | {f_cpu_ms(r.get('startup_cpu_ms'))} | {tgt} | {ver} |")
            if "first_200_ratio" in c:
                lines.append(f"| **sluice/Envoy** | {f_ratio(c.get('first_200_ratio'))} | | {f_ratio(c.get('rss_ratio'))} | | | |")
        lines.append("")
    lines.append("Columns: req/s and latency from the load generator (wrk for HTTP/1.1, h2load for HTTP/2, "
                 "sluice-bench for gRPC Check); proxy CPU = user+sys of the proxy process(es) from "
                 "/proc/<pid>/stat across the measured run divided by the requests served (guide-path: front + "
                 "both sidecars); peak RSS = VmHWM (guide-path: summed over the three proxies); errors = "
                 "socket errors + non-2xx (authz: denied + failed checks). Ratios are sluice/Envoy: for req/s "
                 "higher is better, for everything else lower is better.")
    lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw", required=True)
    ap.add_argument("--machine", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    with open(a.raw) as f:
        raw = [json.loads(line) for line in f if line.strip()]
    with open(a.machine) as f:
        machine = json.load(f)
    rows = aggregate(raw)
    checks = verdicts(rows)
    md = markdown(machine, rows, checks)
    with open(a.md, "w") as f:
        f.write(md)
    with open(a.json, "w") as f:
        json.dump({"machine": machine, "targets": TARGETS, "rows": rows, "checks": checks, "runs": raw},
                  f, indent=2, ensure_ascii=False)
        f.write("\n")
    sys.stdout.write(md)


if __name__ == "__main__":
    main()
