#!/usr/bin/env python3
"""Validates every `mlxk --json` reply the tests recorded against mlx-knife's JSON schema.

Usage: validate_json.py SCHEMA REPLIES_DIR

The tests (tests/common/mod.rs, `record_json_reply`) write one record per reply into
REPLIES_DIR: {"argv": [...], "exit": N, "stdout": "..."}. Each reply must be one JSON document
that validates against the schema (draft-07, `jsonschema`), with the documented extensions of
README.md ("JSON API") applied only where they are documented:

- `convert --dequantize`: `data.mode` is "dequantize" (the schema's enum has no such mode);
- `health --details`: entries and the summary carry extra keys (opt-in, off by default);
- a usage error naming no command mlx-knife has: `command` is null, as mlx-knife's own is.

The exit code must match the envelope: success 0, error 1, usage error (CommandError from the
argument parser) 2. The run fails unless the replies cover every command and mode listed in
REQUIRED, so that an empty or partial recording cannot pass.
"""

import copy
import json
import sys
from pathlib import Path

import jsonschema

# (description, predicate over (argv, envelope)) that at least one valid reply must satisfy.
REQUIRED = [
    ("list", lambda a, e: e["command"] == "list" and e["status"] == "success"),
    ("list with a non-MLX model", lambda a, e: e["command"] == "list" and e["status"] == "success"
        and any(m["framework"] != "MLX" for m in e["data"]["models"])),
    ("show", lambda a, e: e["command"] == "show" and e["status"] == "success"
        and "--files" not in a and "--config" not in a),
    ("show --files", lambda a, e: e["command"] == "show" and e["status"] == "success" and "--files" in a),
    ("show --config", lambda a, e: e["command"] == "show" and e["status"] == "success" and "--config" in a),
    ("show of a managed workspace with a content hash", lambda a, e: e["command"] == "show"
        and e["status"] == "success" and (e["data"]["model"].get("content_hash") or "").startswith("sha256:")),
    ("health with healthy and unhealthy models", lambda a, e: e["command"] == "health"
        and e["status"] == "success" and e["data"]["healthy"] and e["data"]["unhealthy"]),
    ("health of an unknown name", lambda a, e: e["command"] == "health" and e["status"] == "success"
        and e["data"]["summary"]["total"] == 0),
    ("health --fail-on-unhealthy", lambda a, e: e["command"] == "health" and e["status"] == "error"
        and e["error"]["type"] == "HealthCheckFailed"),
    ("convert --repair-index", lambda a, e: e["command"] == "convert" and e["status"] == "success"
        and e["data"]["mode"] == "repair-index"),
    ("convert --quantize", lambda a, e: e["command"] == "convert" and e["status"] == "success"
        and e["data"]["mode"] == "quantize"),
    ("convert --dequantize", lambda a, e: e["command"] == "convert" and e["status"] == "success"
        and e["data"]["mode"] == "dequantize"),
    ("convert --skip-health", lambda a, e: e["command"] == "convert" and e["status"] == "success"
        and e["data"]["health_check"] is False),
    ("run", lambda a, e: e["command"] == "run" and e["status"] == "success"),
    ("server startup", lambda a, e: e["command"] == "server" and e["status"] == "success"
        and e["data"]["port"] > 0),
    ("server that cannot start", lambda a, e: e["command"] == "server" and e["status"] == "error"),
    ("pull", lambda a, e: e["command"] == "pull" and e["status"] == "success"
        and e["data"]["download_status"] == "success"),
    ("pull of a model already there", lambda a, e: e["command"] == "pull" and e["status"] == "success"
        and e["data"]["download_status"] == "already_present"),
    ("clone from the cache", lambda a, e: e["command"] == "clone" and e["status"] == "success"
        and e["data"]["from_cache"] is True),
    ("clone from the hub", lambda a, e: e["command"] == "clone" and e["status"] == "success"
        and e["data"]["from_cache"] is False),
    ("rm", lambda a, e: e["command"] == "rm" and e["status"] == "success" and e["data"]["action"] == "removed"),
    ("version", lambda a, e: e["command"] == "version" and e["status"] == "success"),
    ("a usage error", lambda a, e: e["status"] == "error" and e["error"]["type"] == "CommandError"
        and e["command"] is not None),
    ("an error", lambda a, e: e["status"] == "error" and e["error"]["type"] != "CommandError"),
]


def extended(schema, argv):
    """The schema with the documented extensions this reply's arguments enable."""
    s = copy.deepcopy(schema)
    if "--dequantize" in argv:
        for rule in s["definitions"]["byCommand"]["allOf"]:
            props = rule["then"].get("properties", {}).get("data", {}).get("properties", {})
            if "mode" in props and "repair-index" in props["mode"].get("enum", []):
                props["mode"]["enum"].append("dequantize")
    if "--details" in argv:
        s["definitions"]["healthEntry"]["additionalProperties"] = True
        for rule in s["definitions"]["byCommand"]["allOf"]:
            summary = rule["then"].get("properties", {}).get("data", {}).get("properties", {}).get("summary")
            if summary is not None:
                summary["additionalProperties"] = True
    return s


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    schema = json.loads(Path(sys.argv[1]).read_text())
    records = sorted(Path(sys.argv[2]).glob("*.json"))
    failures, valid = [], []
    for path in records:
        rec = json.loads(path.read_text())
        argv, code = rec["argv"], rec["exit"]
        where = f"{path.name}: mlxk {' '.join(argv)}"
        try:
            env = json.loads(rec["stdout"])
        except json.JSONDecodeError as e:
            failures.append(f"{where}: stdout is not one JSON document ({e})")
            continue
        if env.get("command") is None and env.get("status") == "error":
            # mlx-knife's own usage error for a command it does not know: command null.
            ok = env.get("data") is None and (env.get("error") or {}).get("type") == "CommandError"
            if not ok or code != 2:
                failures.append(f"{where}: a usage error must be CommandError with data null, exit 2")
            continue
        try:
            jsonschema.validate(env, extended(schema, argv))
        except jsonschema.ValidationError as e:
            at = "/".join(str(p) for p in e.absolute_path)
            failures.append(f"{where}: {e.message} (at /{at})")
            continue
        usage = env["status"] == "error" and env["error"]["type"] == "CommandError" and code == 2
        want = 0 if env["status"] == "success" else (2 if usage else 1)
        if code != want:
            failures.append(f"{where}: exit {code} for status {env['status']} (want {want})")
            continue
        valid.append((argv, env))
    missing = [name for name, pred in REQUIRED if not any(_holds(pred, a, e) for a, e in valid)]
    print(f"{len(records)} --json replies, {len(valid)} valid against {Path(sys.argv[1]).name}")
    for f in failures:
        print(f"INVALID {f}")
    for m in missing:
        print(f"MISSING no valid reply covers: {m}")
    if failures or missing or not records:
        sys.exit(1)


def _holds(pred, argv, env):
    try:
        return bool(pred(argv, env))
    except (KeyError, TypeError, AttributeError):
        return False


if __name__ == "__main__":
    main()
