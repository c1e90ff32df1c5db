//! Integration tests: the real `invariant-agent` binary against real servers the tests
//! start and control (HTTP and TCP servers in-process, dnsmasq for DNS), asserting that
//! the report shows exactly the faults injected and nothing else.

mod support;

mod api;
mod api_cli;
mod cli_config;
mod config_reload;
mod demo;
mod export_otlp;
mod export_prometheus;
mod export_support;
mod faults;
mod faults_collector;
mod faults_kube;
mod faults_report_dir;
mod faults_resources;
mod faults_support;
mod faults_targets;
mod histogram_quantile;
mod kube_leader;
mod kube_manifests;
mod kube_probes;
mod kube_scale;
mod kube_support;
mod lifecycle;
mod report;
mod report_html;
mod resume;
mod security;
