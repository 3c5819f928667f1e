//! The live commands (`diagnose`, `top`, `export`): one collection session over every hook
//! family, causes found per interval, and the frame model the renderers share.
pub mod cause;
pub mod causes;
pub mod engine;
pub mod frame;
pub mod gather;
pub mod metrics;
pub mod producer;
pub mod session;
pub mod slow;
pub mod tui;
