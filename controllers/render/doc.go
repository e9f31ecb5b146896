// Package render turns an SmtpRelay, its accounts and their keys into the
// objects the operator applies (ConfigMap, ServiceAccount, Role,
// RoleBinding, Certificate, Deployment, Service, PodDisruptionBudget, and
// the credentials and shard Secrets). Its functions are pure, with no client
// and no context, so that what a spec becomes can be read, and tested
// against the golden files under testdata/golden, without an API server;
// the reconcilers in controllers fetch, render, apply and write status.
package render
