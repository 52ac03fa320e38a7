// A small, dependency-free renderer of /openapi.json (no CDN: everything is served by the gateway).
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const child of children) node.append(child);
  return node;
}

function resolve(doc, schema) {
  if (schema && schema.$ref) return doc.components.schemas[schema.$ref.split("/").pop()];
  return schema;
}

function example(doc, schema, depth) {
  schema = resolve(doc, schema);
  if (!schema || depth > 4) return null;
  if (schema.anyOf) return example(doc, schema.anyOf[0], depth);
  const type = Array.isArray(schema.type) ? schema.type[0] : schema.type;
  if (schema.enum) return schema.enum[1] || schema.enum[0];
  if (type === "object") {
    const out = {};
    for (const [name, prop] of Object.entries(schema.properties || {})) out[name] = example(doc, prop, depth + 1);
    return out;
  }
  if (type === "array") return [example(doc, schema.items, depth + 1)];
  if (type === "integer") return 0;
  if (type === "number") return 0.0;
  if (type === "boolean") return false;
  if (schema.format === "date-time") return "2026-01-01T00:00:00Z";
  return "";
}

function operation(doc, path, verb, op) {
  const secured = (op.security || []).length > 0;
  const summary = el("summary", {}, el("span", { class: "verb " + verb }, verb.toUpperCase()), path);
  if (secured) summary.append(el("span", { class: "lock" }, "bearer token"));
  const body = el("div", { class: "body" });
  body.append(el("p", {}, "gRPC: ", el("code", {}, op["x-grpc-method"] || "")));
  const params = op.parameters || [];
  const inputs = {};
  if (params.length) {
    const table = el("table", {}, el("tr", {}, el("th", {}, "parameter"), el("th", {}, "in"), el("th", {}, "value")));
    for (const p of params) {
      const input = el("input", { type: "text", placeholder: p.required ? "required" : "" });
      inputs[p.name] = [p.in, input];
      table.append(el("tr", {}, el("td", {}, el("code", {}, p.name)), el("td", {}, p.in), el("td", {}, input)));
    }
    body.append(table);
  }
  let textarea = null;
  if (op.requestBody) {
    const schema = op.requestBody.content["application/json"].schema;
    textarea = el("textarea", {});
    textarea.value = JSON.stringify(example(doc, schema, 0), null, 2);
    body.append(el("p", {}, "request body (proto3 JSON)"), textarea);
  }
  const output = el("pre", {}, "");
  const button = el("button", { type: "button" }, "Send");
  button.addEventListener("click", async () => {
    let url = path;
    const query = new URLSearchParams();
    for (const [name, [where, input]] of Object.entries(inputs)) {
      if (where === "path") url = url.replace("{" + name + "}", encodeURIComponent(input.value));
      else if (input.value) query.append(name, input.value);
    }
    if ([...query].length) url += "?" + query;
    const headers = { "Content-Type": "application/json" };
    const token = document.getElementById("token").value.trim();
    if (token) headers.Authorization = "Bearer " + token;
    const response = await fetch(url, { method: verb.toUpperCase(), headers, body: textarea ? textarea.value : undefined });
    output.textContent = response.status + " " + response.statusText + "\n\n" + (await response.text());
  });
  body.append(button, output);
  return el("details", { class: "op" }, summary, body);
}

async function main() {
  const doc = await (await fetch("/openapi.json")).json();
  const root = document.getElementById("operations");
  root.textContent = "";
  const byTag = {};
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [verb, op] of Object.entries(item)) {
      const tag = (op.tags || ["other"])[0];
      (byTag[tag] = byTag[tag] || []).push(operation(doc, path, verb, op));
    }
  }
  for (const tag of Object.keys(byTag).sort()) {
    root.append(el("h2", {}, tag), ...byTag[tag]);
  }
}

main().catch((error) => { document.getElementById("operations").textContent = "could not load the API: " + error; });
