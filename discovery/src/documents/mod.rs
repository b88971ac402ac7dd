//! The KV configuration documents: schema, types and validation.
