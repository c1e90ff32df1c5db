//! invariant-agent: watches cluster invariants for the whole of an e2e run.
//!
//! Data flow: [`config`] turns invariant files into validated specs; [`schedule`] runs
//! each invariant's [`probe`] on its interval and sends [`sample::Sample`]s to the
//! [`engine`], the one task that owns all state and feeds [`eval`]; the engine
//! checkpoints a [`report`]. [`run`] wires these together for the `run` command and
//! [`cli`] is the command line.

pub mod api;
pub mod cli;
pub mod config;
pub mod demo;
pub mod engine;
pub mod eval;
pub mod export;
pub mod kube;
pub mod probe;
pub mod process;
pub mod reload;
pub mod report;
pub mod run;
pub mod sample;
pub mod schedule;
