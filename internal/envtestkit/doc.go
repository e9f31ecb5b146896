// Package envtestkit holds what tests against a real API server (envtest)
// share: one API server per test package with mailfleet's and
// cert-manager's CRDs (Env), namespaces and controller managers for each
// test, the mailfleet objects tests start from, the parts of cert-manager
// and the Deployment controller that envtest does not run, a kubeconfig
// for child processes (kubectl, helm, the operator, the relay), the
// decoding of YAML manifests, and polling. It is imported by tests only, controllers' own among them, so it
// does not import the operator: a package hands it its scheme and cache
// options.
package envtestkit
