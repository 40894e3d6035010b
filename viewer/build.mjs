// Bundles the viewer into dist/ (index.html + viewer.js): everything from node_modules, no CDN.
// `npm run build` (= `make viewer`) generates the stubs and typechecks first.
import { build } from "esbuild";
import { copyFile, mkdir, rm } from "node:fs/promises";

await rm("dist", { recursive: true, force: true });
await mkdir("dist", { recursive: true });
await build({
  entryPoints: ["src/main.ts"],
  bundle: true,
  format: "esm",
  target: "es2022",
  minify: true,
  sourcemap: true,
  outfile: "dist/viewer.js",
  logLevel: "warning",
  legalComments: "external",
});
await copyFile("src/index.html", "dist/index.html");
await copyFile("src/viewer.css", "dist/viewer.css");
