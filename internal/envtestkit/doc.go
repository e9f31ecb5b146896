// Package envtestkit holds what tests against a real API server (envtest)
// need beyond the API server itself: where cert-manager's CRDs are, the
// parts of cert-manager and the Deployment controller that envtest does not
// run, a kubeconfig for child processes (kubectl, helm, the operator), and
// polling. It is imported by tests only.
package envtestkit
