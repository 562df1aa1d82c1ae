//! `cargo xtask schemas`: regenerates the checked-in JSON Schemas of every
//! event type and version, the OpenAPI documents and the topic's AsyncAPI
//! document.

use std::fs;

use anyhow::{Context, Result};

use crate::workspace_root;

/// The file name and pretty JSON of every event schema.
pub fn event_schema_files() -> Vec<(String, String)> {
    domain::events::all_schemas()
        .into_iter()
        .map(|s| {
            let name = format!("{}.v{}.json", s.event_type, s.schema_version);
            (name, serde_json::to_string_pretty(&s.schema).expect("schemas serialize") + "\n")
        })
        .collect()
}

pub fn write() -> Result<()> {
    let events = workspace_root().join("schemas/events");
    fs::create_dir_all(&events).context("create schemas/events")?;
    for entry in fs::read_dir(&events).context("list schemas/events")? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
        }
    }
    for (name, text) in event_schema_files() {
        fs::write(events.join(&name), text).with_context(|| format!("write {name}"))?;
    }
    let openapi = workspace_root().join("schemas/openapi");
    fs::create_dir_all(&openapi).context("create schemas/openapi")?;
    let document = serde_json::to_string_pretty(&command_api::openapi::document())? + "\n";
    fs::write(openapi.join("command-api.json"), document).context("write command-api.json")?;
    let document = serde_json::to_string_pretty(&query_api::openapi::document())? + "\n";
    fs::write(openapi.join("query-api.json"), document).context("write query-api.json")?;
    let asyncapi = workspace_root().join("schemas/asyncapi");
    fs::create_dir_all(&asyncapi).context("create schemas/asyncapi")?;
    let document = serde_json::to_string_pretty(&kafka::asyncapi::document())? + "\n";
    fs::write(asyncapi.join("events.json"), document).context("write events.json")?;
    println!("wrote schemas/events/*.json, schemas/openapi/{{command,query}}-api.json and schemas/asyncapi/events.json");
    Ok(())
}
