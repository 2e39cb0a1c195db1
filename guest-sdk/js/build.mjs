// Build a wmr job written in JavaScript into a Wasm component:
//
//   node guest-sdk/js/build.mjs JOB.js -o OUT.wasm
//
// Bundles JOB.js with the SDK (imported as "wmr-guest") into OUT.js, the
// file that stack traces name, then runs componentize-js on it against
// wit/ (world `job`), without the WASI HTTP features wmr does not provide.
import { mkdir, realpath, writeFile } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { rolldown } from "rolldown";
import { componentize } from "@bytecodealliance/componentize-js";

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const outAt = args.indexOf("-o");
if (args.length !== 3 || outAt < 0 || outAt === args.length - 1) {
  console.error("usage: node guest-sdk/js/build.mjs JOB.js -o OUT.wasm");
  process.exit(2);
}
const job = resolve(args.find((_, i) => i !== outAt && i !== outAt + 1));
await mkdir(dirname(resolve(args[outAt + 1])), { recursive: true });
// The real path: componentize-js reads the bundle from its own directory,
// and refuses paths through a symbolic link (target/ may be one).
const outDir = await realpath(dirname(resolve(args[outAt + 1])));
const out = join(outDir, basename(args[outAt + 1]));
const bundlePath = out.replace(/\.wasm$/, "") + ".js";

const bundle = await rolldown({
  input: job,
  external: [/^wmr:/],
  resolve: { alias: { "wmr-guest": join(here, "wmr_guest.js") } },
  logLevel: "warn",
});
await bundle.write({ file: bundlePath, format: "esm" });
await bundle.close();

process.chdir(outDir);
const { component } = await componentize({
  sourcePath: bundlePath,
  witPath: resolve(here, "../../wit"),
  worldName: "job",
  disableFeatures: ["http", "fetch-event"],
});
await writeFile(out, component);
console.log(`built ${out} (${basename(bundlePath)}: the bundled source)`);
