//! Conversions between proto storage messages and storage types.
