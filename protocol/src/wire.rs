//! The mesh wire messages. (STUB)
