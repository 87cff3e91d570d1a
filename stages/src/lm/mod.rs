//! LM client
