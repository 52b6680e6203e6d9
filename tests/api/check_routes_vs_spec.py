"""The route table and openapi.yaml must list exactly the same {method, path} pairs.
Reads only the `paths:` section: path keys are indented 2 spaces, operations 4."""
import re, subprocess, sys

spec_path, dump_bin = sys.argv[1], sys.argv[2]
spec, in_paths, cur = set(), False, None
for line in open(spec_path):
    if re.match(r"^\S", line):
        in_paths = line.startswith("paths:")
        continue
    if not in_paths:
        continue
    m = re.match(r"^  (/\S*):\s*$", line)
    if m:
        cur = m.group(1)
        continue
    m = re.match(r"^    (get|put|post|delete|patch|head|options):\s*$", line)
    if m and cur:
        spec.add((m.group(1).upper(), cur))
table = set(tuple(l.split(" ", 1)) for l in subprocess.check_output([dump_bin], text=True).splitlines())
ok = True
for p in sorted(spec - table):
    print("in openapi.yaml, not in the route table:", *p); ok = False
for p in sorted(table - spec):
    print("in the route table, not in openapi.yaml:", *p); ok = False
if len(spec) < 20:
    print("suspiciously few operations parsed from the spec:", len(spec)); ok = False
print(len(spec), "operations compared")
sys.exit(0 if ok else 1)
