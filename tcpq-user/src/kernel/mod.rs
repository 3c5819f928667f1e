pub mod btf;
pub mod env;
pub mod privilege;
pub mod probe;
pub mod tracefs;
