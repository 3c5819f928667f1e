#![no_std]
// This file exists to enable the library target (a build-dependency of tcpq-user, so that cargo
// rebuilds the kernel object when this crate changes).
