import { join } from 'node:path'
import { exportPrivateKeyPem, exportPublicKeyPem, generateSigningKey } from '@llmesh/manifest'
import type { Command } from 'commander'
import { writeFileAtomic } from '../files.js'
import type { CommandContext } from '../program.js'

export function registerKeyCommands(program: Command, context: CommandContext): void {
  const keys = program.command('keys').description('manage Ed25519 signing keys')
  keys
    .command('generate')
    .description('create a signing key pair: <name>.private.pem (mode 600) and <name>.public.pem')
    .option('-d, --out-dir <folder>', 'where to write the keys', '.')
    .option('-n, --name <name>', 'file name prefix', 'llmesh-signing')
    .action(async (options: { outDir: string; name: string }) => {
      const output = context.output()
      const key = generateSigningKey()
      const privatePath = join(options.outDir, `${options.name}.private.pem`)
      const publicPath = join(options.outDir, `${options.name}.public.pem`)
      await writeFileAtomic(privatePath, exportPrivateKeyPem(key), { mode: 0o600 })
      await writeFileAtomic(publicPath, exportPublicKeyPem(key))
      output.result(
        { keyId: key.keyId, privateKey: privatePath, publicKey: publicPath },
        `key ${key.keyId}\n  private: ${privatePath} (keep it secret)\n  public:  ${publicPath} (give it to those who verify)`,
      )
    })
}
