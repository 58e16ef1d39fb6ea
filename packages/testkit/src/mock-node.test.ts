import { describe, expect, it } from 'vitest'
import { mockToken, startMockNode } from './mock-node.js'

async function chat(url: string, body: Record<string, unknown> = {}) {
  const response = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      model: 'mock-model',
      messages: [{ role: 'user', content: 'a b c' }],
      max_tokens: 3,
      ...body,
    }),
  })
  return { status: response.status, text: await response.text() }
}

describe('startMockNode', () => {
  it('answers chat completions with deterministic tokens and usage, streaming or not', async () => {
    await using node = await startMockNode()
    const whole = await chat(node.url)
    expect(whole.status).toBe(200)
    const answer = JSON.parse(whole.text)
    expect(answer.choices[0].message.content).toBe(
      [0, 1, 2].map((index) => mockToken('a b c', index)).join(''),
    )
    expect(answer.usage).toEqual({ prompt_tokens: 3, completion_tokens: 3, total_tokens: 6 })
    const streamed = await chat(node.url, { stream: true })
    const events = streamed.text.split('\n\n').filter(Boolean)
    expect(events.at(-1)).toBe('data: [DONE]')
    const text = events
      .slice(0, -1)
      .map((event) => JSON.parse(event.slice(6)).choices[0].delta.content ?? '')
      .join('')
    expect(text).toBe(answer.choices[0].message.content)
    expect((await fetch(`${node.url}/health`)).status).toBe(200)
    expect(
      ((await (await fetch(`${node.url}/v1/models`)).json()) as { data: unknown[] }).data,
    ).toHaveLength(1)
  })

  it('refuses past its slots and queue with 503, and unknown models with 404', async () => {
    await using node = await startMockNode({ slots: 1, maxQueue: 1, firstTokenMs: 30 })
    const statuses = await Promise.all(
      [1, 2, 3].map(() => chat(node.url).then((answer) => answer.status)),
    )
    expect(statuses.sort()).toEqual([200, 200, 503])
    expect((await chat(node.url, { model: 'other' })).status).toBe(404)
  })

  it('injects 5xx answers at the rate asked, and refuses connections while stopped', async () => {
    await using node = await startMockNode()
    node.setFaults({ errorRate: 0.5 })
    const statuses = []
    for (let index = 0; index < 4; index++) statuses.push((await chat(node.url)).status)
    expect(statuses).toEqual([200, 500, 200, 500])
    node.clearFaults()
    await node.stop()
    await expect(chat(node.url)).rejects.toThrow()
    await node.start()
    expect((await chat(node.url)).status).toBe(200)
  })

  it('resets or stalls a stream after k tokens', async () => {
    await using node = await startMockNode({ tokenIntervalMs: 1 })
    node.setFaults({ resetAfterTokens: 2 })
    await expect(chat(node.url, { stream: true, max_tokens: 6 })).rejects.toThrow()
    expect(node.requests.at(-1)!.tokensSent).toBe(2)
  })
})
