import sys, glob, gzip, json, collections, re
d = sys.argv[1]; N = 4
hlo = open(d + "/hlo.txt").read()
meta = {m.group(1): m.group(2) for m in re.finditer(r"^\s*%(\S+) = [^\n]*?metadata=\{op_name=\"([^\"]*)\"", hlo, re.M)}
fn_ = sorted(glob.glob(d + "/**/*perfetto_trace.json.gz", recursive=True))[-1]
ev = json.load(gzip.open(fn_)); ev = ev["traceEvents"] if isinstance(ev, dict) else ev
agg = collections.Counter(); tot = 0
for e in ev:
  if e.get("ph") != "X": continue
  n = e["name"]
  if n.startswith("$") or "Thunk" in n or "Slinky" in n or "Pjit" in n: continue
  op = meta.get(n, "?" + n); tot += e["dur"]
  m = re.search(r"(ResidualTemporalBlock_\d+|Downsample\w*|Upsample\w*|TimeEmbedding\w*|Conv1dBlock_\d+|Dense_\d+|LayerNorm\w*|GroupNorm\w*|Attention\w*|DiTBlock_\d+|adam|optax)", op)
  sub = re.search(r"(Conv1d_0|GroupNorm_0|Dense_0|Conv1d_\d+)", op.split(m.group(1))[-1]) if m else None
  key = (m.group(1) if m else op[-50:]) + ("/" + sub.group(1) if sub else "")
  agg[key] += e["dur"]
print(f"total {tot/1e3/N:.1f}")
for k, v in agg.most_common(40): print(f"{v/1e3/N:7.2f} {k}")
