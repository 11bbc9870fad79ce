// Runs a wasm32-wasip1 command module under Node's WASI (V8, as in Envoy), with the current
// directory preopened, e.g. the policy crate's jwt_verify_bench example (see its header).
//   node scripts/wasi_run.mjs MODULE.wasm ARGS...
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";
import process from "node:process";

const [module, ...args] = process.argv.slice(2);
const wasi = new WASI({ version: "preview1", args: [module, ...args], env: {}, preopens: { ".": "." } });
const wasm = await WebAssembly.compile(await readFile(module));
const instance = await WebAssembly.instantiate(wasm, wasi.getImportObject());
process.exitCode = wasi.start(instance);
