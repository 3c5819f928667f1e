pub mod btf;
pub mod env;
pub mod probe;
pub mod tracefs;
