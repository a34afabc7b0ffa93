//! The checked-in JSON Schema is exactly what `models_config::json_schema()` generates.
//!
//! After changing `src/spec.rs`, regenerate it with
//! `UPDATE_SCHEMA=1 cargo nextest run -p models-config --test schema_up_to_date`.

use std::path::Path;

#[test]
fn checked_in_schema_is_up_to_date() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/models-config.schema.json");
    let mut generated = serde_json::to_string_pretty(&models_config::json_schema())
        .expect("a schema serializes to JSON");
    generated.push('\n');

    if std::env::var_os("UPDATE_SCHEMA").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        return;
    }

    let checked_in = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    assert!(
        checked_in == generated,
        "{} is stale; regenerate it with \
         `UPDATE_SCHEMA=1 cargo nextest run -p models-config --test schema_up_to_date`",
        path.display()
    );
}
