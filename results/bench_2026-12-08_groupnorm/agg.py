import re, gzip, glob, json, collections
hlo = open("hlo.txt").read()
meta = {}
for m in re.finditer(r"^\s*%(\S+) = [^\n]*?metadata=\{op_name=\"([^\"]*)\"", hlo, re.M):
  meta[m.group(1)] = m.group(2)
fn = sorted(glob.glob("trace/**/*perfetto_trace.json.gz", recursive=True))[-1]
ev = json.load(gzip.open(fn)); ev = ev["traceEvents"] if isinstance(ev, dict) else ev
cat = collections.Counter()
for e in ev:
  if e.get("ph") != "X": continue
  n = e["name"]
  if n.startswith("$") or "Thunk" in n or "Slinky" in n: continue
  op = meta.get(n, "?" + n)
  op = re.sub(r"jit\(run\)/while/body/(closed_call/)?", "", op)
  key = "/".join(op.split("/")[:4])
  cat[key] += e["dur"]
for k, v in cat.most_common(45):
  print(f"{v/1e3/50:7.3f} {k}")
