import type { NetworkModel, NodeRecord } from '@llmesh/registry-client'
import { html, raw } from 'hono/html'

/**
 * The page a person reads at `GET /`: nodes with state, hardware, models, load and last
 * heartbeat, and models with host counts. Plain server-rendered HTML (escaped by hono/html) that
 * reloads itself every few seconds.
 */
export function renderStatusPage({
  nodes,
  models,
  refreshSeconds,
  now,
}: {
  nodes: NodeRecord[]
  models: NetworkModel[]
  refreshSeconds: number
  now: number
}): string {
  const sorted = [...nodes].sort((a, b) => a.nodeId.localeCompare(b.nodeId))
  const ago = (iso: string | null) =>
    iso === null ? 'never' : `${Math.max(0, Math.round((now - Date.parse(iso)) / 1000))} s ago`
  const gib = (bytes: number) => `${(bytes / 1024 ** 3).toFixed(1)} GiB`
  return String(html`<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8" />
    <meta http-equiv="refresh" content="${refreshSeconds}" />
    <title>llmesh registry</title>
    <style>
      body { font: 14px/1.4 system-ui, sans-serif; margin: 2rem; color: #1d1d1f; }
      table { border-collapse: collapse; margin-bottom: 2rem; }
      th, td { padding: 0.3rem 0.8rem; border-bottom: 1px solid #ddd; text-align: left; vertical-align: top; }
      .state { font-weight: 600; }
      .ready { color: #1a7f37; } .joining { color: #9a6700; } .draining { color: #6e7781; } .not-ready { color: #cf222e; }
    </style>
  </head>
  <body>
    <h1>llmesh registry</h1>
    <p>${sorted.length} nodes, ${sorted.filter((node) => node.state === 'ready').length} ready. Refreshes every ${refreshSeconds} s.</p>
    <h2>Nodes</h2>
    <table id="nodes">
      <thead><tr><th>node</th><th>state</th><th>endpoint</th><th>hardware</th><th>models</th><th>load</th><th>last heartbeat</th></tr></thead>
      <tbody>
        ${sorted.map(
          (node) => html`<tr data-node="${node.nodeId}">
          <td>${node.nodeId}</td>
          <td class="state ${node.state}">${node.state}</td>
          <td>${node.endpoint}</td>
          <td>${node.hardware.cpu.cores} cores, ${gib(node.hardware.ramBytes)} RAM${node.hardware.gpus.map((gpu) => html`<br />${gpu.name} ${gib(gpu.vramBytes)}`)}</td>
          <td>${node.models.map((model) => html`${model.id}@${model.version}<br />`)}</td>
          <td>${node.load === null ? 'no heartbeat yet' : html`${node.load.inFlight}/${node.capacitySlots} busy, ${node.load.queueDepth} queued, ${node.load.tokensPerSecond.toFixed(1)} tok/s`}</td>
          <td>${ago(node.lastHeartbeatAt)}</td>
        </tr>`,
        )}
      </tbody>
    </table>
    <h2>Models</h2>
    <table id="models">
      <thead><tr><th>model</th><th>digest</th><th>hosts</th><th>ready</th></tr></thead>
      <tbody>
        ${models.map((model) => html`<tr><td>${model.id}@${model.version}</td><td><code>${model.digest.slice(0, 16)}…</code></td><td>${model.hosts}</td><td>${model.readyHosts}</td></tr>`)}
      </tbody>
    </table>
    ${raw('')}
  </body>
</html>`)
}
