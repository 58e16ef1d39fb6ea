import { readFile, stat } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import {
  type CreateManifestProgressEvent,
  createManifest,
  importSigningKey,
  importTrustedKey,
  parseCatalog,
  parseManifest,
  readDocument,
  signCatalog,
  signManifest,
  verifyCatalog,
  verifyManifest,
} from '@llmesh/manifest'
import type { Command } from 'commander'
import { writeFileAtomic } from '../files.js'
import type { CommandContext } from '../program.js'
import { parseInteger } from './option-parsers.js'

export function registerManifestCommands(program: Command, context: CommandContext): void {
  const manifest = program
    .command('manifest')
    .description('create, validate, sign and verify model manifests')

  manifest
    .command('create')
    .description('hash files (sha256 and piece hashes in one pass) into a manifest')
    .argument('<paths...>', 'files, or one folder whose files become the artifacts')
    .requiredOption('--id <id>', 'model id, for example acme/tiny-llama')
    .requiredOption('--model-version <version>', 'semantic version, for example 1.0.0')
    .option(
      '--profile <profile>',
      'gguf, hf-transformers, hf-diffusers or custom (guessed when absent)',
    )
    .option('--license <id>', 'license identifier', 'unknown')
    .option(
      '--piece-size <bytes>',
      'piece size for per-piece integrity (power of two)',
      parseInteger,
    )
    .option(
      '--mirror <url...>',
      'base URLs the artifacts are served from (the artifact path is appended)',
    )
    .option('--allow-insecure-mirrors', 'accept http mirrors (local testing only)')
    .option(
      '-o, --out <file>',
      'write the manifest here (and piece indexes beside it) instead of stdout',
    )
    .action(async (paths: string[], options: CreateOptions) => {
      const output = context.output()
      const folder =
        paths.length === 1 && (await stat(paths[0]!)).isDirectory() ? paths[0] : undefined
      const mirrorsFor = (path: string) =>
        (options.mirror ?? []).map(
          (base) => new URL(path, base.endsWith('/') ? base : `${base}/`).href,
        )
      const files = folder === undefined ? paths.map((file) => ({ file })) : undefined
      const onProgress = progressPrinter(context)
      const created = await createManifest({
        ...(folder === undefined ? {} : { folder }),
        ...(files === undefined ? {} : { files }),
        manifest: {
          id: options.id,
          version: options.modelVersion,
          license: { id: options.license },
          ...(options.profile === undefined ? {} : { profile: options.profile as never }),
        },
        ...(options.pieceSize === undefined ? {} : { pieceSize: options.pieceSize }),
        allowInsecureMirrors: options.allowInsecureMirrors === true,
        signal: context.signal,
        onProgress,
      })
      const withMirrors = {
        ...created.manifest,
        artifacts: created.manifest.artifacts.map((artifact) => ({
          ...artifact,
          mirrors: [...artifact.mirrors, ...mirrorsFor(artifact.path)],
        })),
      }
      const finalManifest = parseManifest(withMirrors, {
        allowInsecureMirrors: options.allowInsecureMirrors === true,
      })
      const text = `${JSON.stringify(finalManifest, null, 2)}\n`
      if (options.out === undefined) {
        context.io.stdout(text)
        return
      }
      const piecesFolder = join(dirname(resolve(options.out)), 'pieces')
      for (const index of created.pieceIndexes)
        await writeFileAtomic(
          join(piecesFolder, `${index.sha256}.json`),
          `${JSON.stringify(index)}\n`,
        )
      await writeFileAtomic(options.out, text)
      output.result(
        {
          manifest: options.out,
          pieceIndexes: piecesFolder,
          artifacts: finalManifest.artifacts.map(({ path, size, sha256 }) => ({
            path,
            size,
            sha256,
          })),
        },
        [
          `wrote ${options.out} (${finalManifest.artifacts.length} artifact${finalManifest.artifacts.length === 1 ? '' : 's'})`,
          ...finalManifest.artifacts.map(
            (artifact) => `  ${artifact.sha256}  ${artifact.path} (${artifact.size} bytes)`,
          ),
          `piece indexes in ${piecesFolder}`,
        ].join('\n'),
      )
    })

  manifest
    .command('validate')
    .description('check a manifest or catalog (JSON or YAML) and list every problem with its path')
    .argument('<file>', 'manifest or catalog file')
    .option('--allow-insecure-mirrors', 'accept http mirrors')
    .action(async (file: string, options: { allowInsecureMirrors?: boolean }) => {
      const output = context.output()
      const document = readDocument(await readFile(file), { source: file })
      const parseOptions = {
        source: file,
        allowInsecureMirrors: options.allowInsecureMirrors === true,
      }
      if (isCatalog(document)) {
        const catalog = parseCatalog(document, parseOptions)
        output.result(
          { valid: true, kind: 'catalog', models: catalog.models.length },
          `${file}: valid catalog of ${catalog.models.length} models`,
        )
      } else {
        const parsed = parseManifest(document, parseOptions)
        output.result(
          {
            valid: true,
            kind: 'manifest',
            id: parsed.id,
            version: parsed.version,
            artifacts: parsed.artifacts.length,
          },
          `${file}: valid manifest ${parsed.id}@${parsed.version} (${parsed.artifacts.length} artifacts)`,
        )
      }
    })

  manifest
    .command('sign')
    .description('sign a manifest or catalog with an Ed25519 private key')
    .argument('<file>', 'manifest or catalog file')
    .requiredOption(
      '-k, --key <file>',
      'private key (PEM or JWK), as written by `llmesh keys generate`',
    )
    .option('-o, --out <file>', 'write the signed document here instead of stdout')
    .option('--allow-insecure-mirrors', 'accept http mirrors')
    .action(
      async (
        file: string,
        options: { key: string; out?: string; allowInsecureMirrors?: boolean },
      ) => {
        const output = context.output()
        const key = importSigningKey(await readFile(options.key, 'utf8'))
        const document = readDocument(await readFile(file), { source: file })
        const parseOptions = { allowInsecureMirrors: options.allowInsecureMirrors === true }
        const signed = isCatalog(document)
          ? signCatalog(document, key, parseOptions)
          : signManifest(document, key, parseOptions)
        const text = `${JSON.stringify(signed, null, 2)}\n`
        if (options.out === undefined) context.io.stdout(text)
        else {
          await writeFileAtomic(options.out, text)
          output.result(
            { signed: options.out, keyId: key.keyId },
            `signed ${file} with ${key.keyId} → ${options.out}`,
          )
        }
      },
    )

  manifest
    .command('verify')
    .description('verify the signature of a manifest or catalog against trusted public keys')
    .argument('<file>', 'signed manifest or catalog file')
    .requiredOption('-t, --trust <files...>', 'trusted public keys (PEM or JWK)')
    .option('--allow-insecure-mirrors', 'accept http mirrors')
    .action(async (file: string, options: { trust: string[]; allowInsecureMirrors?: boolean }) => {
      const output = context.output()
      const trusted = await Promise.all(
        options.trust.map(async (path) => importTrustedKey(await readFile(path, 'utf8'), path)),
      )
      const parseOptions = {
        source: file,
        allowInsecureMirrors: options.allowInsecureMirrors === true,
      }
      // Read the text once; the verify functions accept the parsed value as well as text.
      const document = readDocument(await readFile(file), parseOptions)
      const verified = isCatalog(document)
        ? verifyCatalog(document, trusted, parseOptions)
        : verifyManifest(document, trusted, parseOptions)
      output.result(
        { valid: true, keyId: verified.keyId, key: verified.keyName },
        `${file}: signature valid, signed by ${verified.keyId} (${verified.keyName})`,
      )
    })
}

interface CreateOptions {
  id: string
  modelVersion: string
  profile?: string
  license: string
  pieceSize?: number
  mirror?: string[]
  allowInsecureMirrors?: boolean
  out?: string
}

function isCatalog(document: unknown): boolean {
  return typeof document === 'object' && document !== null && 'models' in document
}

function progressPrinter(context: CommandContext): (event: CreateManifestProgressEvent) => void {
  const output = context.output()
  let lastPercent = -1
  return (event) => {
    if (output.json) return
    if (event.type === 'manifest:hash-progress') {
      const detail = event.detail as { path: string; totalBytesHashed: number; totalBytes: number }
      const percent =
        detail.totalBytes === 0
          ? 100
          : Math.floor((detail.totalBytesHashed / detail.totalBytes) * 100)
      if (context.io.interactive && percent !== lastPercent)
        context.io.stderr(`\rhashing ${detail.path} ${percent}%   `)
      lastPercent = percent
    } else if (event.type === 'manifest:file-hashed') {
      const detail = event.detail as { path: string; sha256: string }
      context.io.stderr(
        `${context.io.interactive ? '\r' : ''}hashed ${detail.path} ${detail.sha256}\n`,
      )
    }
  }
}
