//! kiln-backend-ort
