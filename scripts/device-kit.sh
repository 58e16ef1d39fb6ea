#!/usr/bin/env bash
# Builds .device-kit/: what the p2p benchmark needs to run on a machine with no Node.js and no
# network (the device machines some sessions are lent: 16 cores, nothing reachable, at most
# 64 MiB carried). It holds this machine's Node binary (xz, about 30 MB) and the benchmark and
# its peer process, each bundled into one file (about 5 MB each).
#
#   bash scripts/device-kit.sh      # here, after `pnpm build`
#   then, with the device tool:     run(carry: [".device-kit"],
#                                       command: "bash .device-kit/run.sh --only transfer --runs 3")
#
# run.sh unpacks Node into /tmp, runs the benchmark with the arguments it is given, and writes
# its output, with the machine's CPU and core count, to $OUT/p2p-bench.log.
set -euo pipefail
cd "$(dirname "$0")/.."
kit=.device-kit
rm -rf "$kit"
mkdir -p "$kit"

node_binary=$(node -p 'process.execPath')
xz -T0 -6 -c "$node_binary" > "$kit/node.xz"

esbuild=$(node -p "require.resolve('esbuild/bin/esbuild', { paths: [require.resolve('tsup')] })")
"$esbuild" packages/p2p-storage/bench/p2p.bench.ts packages/p2p-storage/bench/peer-child.ts \
  --bundle --platform=node --format=esm --target=node22 --log-level=warning --outdir="$kit" \
  --banner:js="import { createRequire as __createRequire } from 'node:module'; const require = __createRequire(import.meta.url);"
# The bundles are ES modules.
echo '{ "type": "module" }' > "$kit/package.json"

cat > "$kit/run.sh" <<'RUN'
#!/usr/bin/env bash
set -uo pipefail
kit=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$kit/out}
mkdir -p "$out" /tmp/llmesh-kit
# xz, or Python's lzma where xz is not installed (the device image has Python).
if command -v xz >/dev/null; then
  xz -d -c "$kit/node.xz" > /tmp/llmesh-kit/node
else
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    "$kit/node.xz" /tmp/llmesh-kit/node
fi
chmod +x /tmp/llmesh-kit/node
{
  echo "cores: $(nproc); $(grep -m1 'model name' /proc/cpuinfo); node $(/tmp/llmesh-kit/node --version)"
  echo "arguments: $*"
} > "$out/p2p-bench.log"
PATH=/tmp/llmesh-kit:$PATH node "$kit/p2p.bench.js" "$@" >> "$out/p2p-bench.log" 2>&1
status=$?
echo "exit $status" >> "$out/p2p-bench.log"
tail -n 30 "$out/p2p-bench.log"
exit $status
RUN
chmod +x "$kit/run.sh"
du -sh "$kit"
