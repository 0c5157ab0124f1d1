import json, os, sys
"""Prints results/mujoco_expectile/table.md: python results/mujoco_expectile/table.py DIR, with
DIR holding the runs' folders (results.json, decisions.jsonl; this folder itself works)."""
B = sys.argv[1]
rows = [("Hopper", "0.99", "first", "offline", "hopper_old"), ("Hopper", "0.9", "first", "offline", "t09_off"),
        ("Hopper", "0.9", "first + argmax", "offline", "hopper_new"),
        ("Hopper", "0.9", "first + argmax, 8 curve eps", "offline", "hopper_c8"),
        ("Hopper", "0.99", "first", "online", "t099_on"), ("Hopper", "0.9", "first + argmax", "online", "hopper_new_on"),
        ("Walker2d", "0.99", "first", "offline", "walker2d_old"), ("Walker2d", "0.9", "first", "offline", "walker2d_t09"),
        ("Walker2d", "0.9", "first + argmax", "offline", "walker2d_new"),
        ("Walker2d", "0.9", "first + argmax, 8 curve eps", "offline", "walker2d_c8"),
        ("HalfCheetah", "0.99", "first", "offline", "halfcheetah_old"), ("HalfCheetah", "0.9", "first", "offline", "halfcheetah_t09"),
        ("HalfCheetah", "0.9", "first + argmax", "offline", "halfcheetah_new"),
        ("HalfCheetah", "0.9", "first + argmax, 8 curve eps", "offline", "halfcheetah_c8")]
print("| task | τ | guard watches | alignment | `first` before → after (95 % CI) | `argmax` before → after (95 % CI) | D4RL `argmax` before → after | reverted | env steps |")
print("|---|---|---|---|---|---|---|---|---|")
for task, tau, guard, mode, d in rows:
  p = os.path.join(B, d)
  r = json.load(open(p + "/results.json")); a = r["align"]
  if os.path.exists(p + "/source_results.json"):  # evaluation-only resume of a finished run:
    r["online_env_steps"] = json.load(open(p + "/source_results.json"))["online_env_steps"]
  rev = sorted({json.loads(l)["stage"] for l in open(p + "/decisions.jsonl") if json.loads(l).get("action") == "revert" or "environment" in json.loads(l).get("reason", "")})
  f = lambda s, k: f"{a[s][k]['return_mean']:.1f} (± {a[s][k]['return_ci95']:.1f})"
  n = lambda k: f"{a['argmax'][k]['normalized_score']:.1f}"
  print(f"| {task} | {tau} | {guard} | {mode} | {f('first','before')} → {f('first','after')} | {f('argmax','before')} → {f('argmax','after')} | {n('before')} → {n('after')} | {', '.join(s.upper() for s in rev) or '–'} | {r.get('online_env_steps', '–')} |")
