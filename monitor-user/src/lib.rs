//! agentmon: traces what an AI agent's process tree does in the kernel and reports
//! every side effect as a structured event.
//!
//! Data flows one way: kernel sensors -> [`decode`] -> [`proctable`] -> [`enrich`]
//! -> [`sink`]. [`kernel`] loads the sensors; [`launch`] starts a tracked command;
//! [`cli`] is the command line.

pub mod audit;
pub mod cgroupname;
pub mod cli;
pub mod contain;
pub mod container;
pub mod ctl;
pub mod decode;
pub mod enforce;
pub mod enrich;
pub mod event;
pub mod gate;
pub mod globs;
pub mod jsonw;
pub mod judge;
pub mod kernel;
pub mod launch;
pub mod lockfile;
pub mod metrics;
pub mod names;
pub mod nats;
pub mod noise;
pub mod ocsf;
pub mod paths;
pub mod policy;
pub mod proctable;
pub mod prompt;
pub mod realpath;
pub mod replay;
pub mod runner;
pub mod sensitive;
pub mod signed;
pub mod sink;
pub mod task;
pub mod torn;
pub mod worker;
