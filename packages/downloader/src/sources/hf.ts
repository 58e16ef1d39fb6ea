import { InvalidArgumentError } from '@llmesh/core'

/** A file on a Hugging Face-compatible hub, as written `hf:<owner>/<repo>/<file>[#revision]`. */
export interface HfReference {
  owner: string
  repo: string
  /** Path of the file inside the repository, `/`-separated. */
  file: string
  /** Branch, tag or commit; `main` when left out. */
  revision: string
}

export const DEFAULT_HF_ENDPOINT = 'https://huggingface.co'

const segment = /^[A-Za-z0-9][A-Za-z0-9._-]*$/

/** Parses an `hf:` URI; throws `InvalidArgumentError` naming what is wrong. */
export function parseHfUri(uri: string): HfReference {
  const match = /^hf:(?:\/\/)?([^#]+)(?:#(.+))?$/.exec(uri)
  const fail = (message: string) =>
    new InvalidArgumentError({ argument: 'uri', message: `"${uri}" ${message}` })
  if (match === null) throw fail('is not an hf: URI (hf:<owner>/<repo>/<file>[#revision])')
  const [, path = '', revision = 'main'] = match
  const parts = path.split('/')
  if (parts.length < 3) throw fail('must name an owner, a repository and a file')
  const [owner = '', repo = '', ...file] = parts
  if (!segment.test(owner) || !segment.test(repo))
    throw fail(
      'has an owner or repository with characters other than letters, digits, ".", "_", "-"',
    )
  if (file.some((part) => part === '' || part === '.' || part === '..'))
    throw fail('has an empty, "." or ".." segment in its file path')
  return { owner, repo, file: file.join('/'), revision }
}

/** The download URL of a hub file: `<endpoint>/<owner>/<repo>/resolve/<revision>/<file>`. */
export function hfResolveUrl(reference: HfReference, endpoint = DEFAULT_HF_ENDPOINT): URL {
  const base = endpoint.endsWith('/') ? endpoint : `${endpoint}/`
  const file = reference.file.split('/').map(encodeURIComponent).join('/')
  return new URL(
    `${encodeURIComponent(reference.owner)}/${encodeURIComponent(reference.repo)}/resolve/${encodeURIComponent(reference.revision)}/${file}`,
    base,
  )
}
