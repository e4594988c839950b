// Builds the browser assets the Python package serves, from node_modules (npm ci):
// copies the vendored libraries with their licences into analytics/static/vendor/, and
// minifies the tracker into analytics/static/tracker/analytics.min.js. Run `npm run assets` after changing
// package.json or the tracker, and commit the result: installing the package needs no npm.
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { minify } from "terser";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const modules = join(root, "node_modules");
const statics = join(root, "analytics", "static");

// Each library: the files the pages load, and the licence texts that go with them.
const VENDOR = {
  "chart.js": { from: "chart.js", files: ["dist/chart.umd.min.js", "LICENSE.md"] },
  "swagger-ui": {
    from: "swagger-ui-dist",
    files: ["swagger-ui-bundle.js", "swagger-ui.css", "LICENSE", "NOTICE",
            "swagger-ui-bundle.js.LICENSE.txt"],
  },
};

// Source maps are not shipped, so the comments pointing at them go too (a browser with its
// developer tools open would otherwise ask the server for files it does not have).
const withoutSourceMap = (text) => text.replace(/\n?\/[/*][#@] sourceMappingURL=[^\n]*\s*$/, "\n");

rmSync(join(statics, "vendor"), { recursive: true, force: true });
for (const [name, { from, files }] of Object.entries(VENDOR)) {
  const target = join(statics, "vendor", name);
  mkdirSync(target, { recursive: true });
  const version = JSON.parse(readFileSync(join(modules, from, "package.json"), "utf8")).version;
  for (const file of files) {
    const source = join(modules, from, file);
    const destination = join(target, file.split("/").pop());
    if (/\.(js|css)$/.test(file)) {
      writeFileSync(destination, withoutSourceMap(readFileSync(source, "utf8")));
    } else {
      copyFileSync(source, destination);
    }
  }
  writeFileSync(join(target, "VERSION"), `${from} ${version}\n`);
  console.log(`vendor/${name}: ${from} ${version}`);
}

const tracker = readFileSync(join(statics, "tracker", "analytics.js"), "utf8");
const minified = await minify(tracker, {
  compress: { passes: 2 }, mangle: { toplevel: true }, format: { comments: false },
});
writeFileSync(join(statics, "tracker", "analytics.min.js"), minified.code + "\n");
console.log(`tracker/analytics.min.js: ${minified.code.length} bytes`);
