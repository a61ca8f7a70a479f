//! ACPI tables (placeholder).
