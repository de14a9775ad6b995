#!/usr/bin/env python3
"""Fills in each case's expected answer from the real OPA engine (a developer tool; the test
suite never runs it). Usage, with the opa-golib-python-bindings wheel on PYTHONPATH:
    PYTHONPATH=<wheel dir> python fill.py crates/authz/tests/conformance/*.yaml
Cases that already have want_result or want_error are left alone (--force refills them).

The wheel always evaluates with strict builtin errors. For a case without `strict_error: true`
an eval_builtin_error or eval_type_error therefore becomes OPA's lenient answer, undefined
(an empty want_result), as OPA documents for its default mode."""
import json, sys, yaml
from opa_bindings import OpaEngine, OpaError

force = "--force" in sys.argv
for path in [a for a in sys.argv[1:] if a != "--force"]:
    doc = yaml.safe_load(open(path))
    for case in doc["cases"]:
        if not force and ("want_result" in case or "want_error" in case):
            continue
        for k in ("want_result", "want_error", "want_error_code"):
            case.pop(k, None)
        e = OpaEngine()
        try:
            for i, m in enumerate(case.get("modules") or ["package test\n"]):
                e.add_policy(f"test-{i}.rego", m)
            if case.get("data") is not None:
                e.add_data(case["data"])
            rs = e.eval_query(case["query"], case.get("input"))
            case["want_result"] = rs
        except OpaError as err:
            msg = err.message
            code = next((c for c in ["eval_builtin_error", "eval_type_error", "eval_conflict_error", "rego_type_error",
                                     "rego_parse_error", "rego_compile_error", "rego_recursion_error", "rego_unsafe_var_error",
                                     "eval_internal_error"] if c in msg), "unknown")
            if code in ("eval_builtin_error", "eval_type_error") and not case.get("strict_error"):
                case["want_result"] = []
            else:
                case["want_error_code"] = code
                case["want_error"] = msg
        finally:
            e.close()
    yaml.safe_dump(doc, open(path, "w"), sort_keys=False, allow_unicode=True, width=200)
    print(path, len(doc["cases"]))
