// Parse an AsyncAPI document with the AsyncAPI project's own parser and print its diagnostics
// as one JSON object: {"parsed": bool, "diagnostics": [{"severity", "code", "message", "path"}]}.
// Usage: node validate_asyncapi.mjs <document.json>   (exit 0 when parsed, 1 when not, 2 on usage)
import { readFile } from "node:fs/promises";
import { Parser } from "@asyncapi/parser";

const SEVERITY = ["error", "warning", "information", "hint"];

const path = process.argv[2];
if (!path) {
  console.error("usage: node validate_asyncapi.mjs <document.json>");
  process.exit(2);
}
const parser = new Parser();
const { document, diagnostics } = await parser.parse(await readFile(path, "utf8"));
const report = {
  parsed: document !== undefined,
  diagnostics: diagnostics.map((d) => ({
    severity: SEVERITY[d.severity] ?? String(d.severity),
    code: String(d.code),
    message: d.message,
    path: d.path.join("/"),
  })),
};
console.log(JSON.stringify(report));
process.exit(report.parsed ? 0 : 1);
