//! Integration tests: the real `invariant-agent` binary against real servers the tests
//! start and control (HTTP and TCP servers in-process, dnsmasq for DNS), asserting that
//! the report shows exactly the faults injected and nothing else.

mod support;

mod cli_config;
mod demo;
mod faults;
mod lifecycle;
