//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

const (
	systemNS = "mailfleet-system"
	tenantNS = "mail"
	relay    = "smtp"
)

// TestFleet installs the chart and the samples as docs/quickstart.md says,
// then runs the scenarios in order on that one installation: each prints
// what it measured.
func TestFleet(t *testing.T) {
	dumpOnFailure(t, systemNS, tenantNS, "cert-manager")
	start := time.Now()
	if !t.Run("install", installFleet) {
		t.FailNow()
	}
	t.Logf("installed, every resource Ready, in %v", time.Since(start).Round(time.Second))
	env := newFleetEnv(t)
	for _, s := range []struct {
		name string
		run  func(*testing.T, *fleetEnv)
	}{
		{"ready", scenarioReady},
		{"pod-spec", scenarioPodSpec},
		{"submit", scenarioSubmit},
		{"budget", scenarioBudget},
		{"accounts", scenarioAccounts},
		{"service", scenarioService},
		{"certificate", scenarioCertificateRenewal},
		{"evictions", scenarioEvictions},
		{"kill-and-scale", scenarioKillAndScale},
		{"upgrade", scenarioUpgradeUnderLoad},
		{"backends-lost", scenarioBackendsLost},
		{"uninstall", scenarioUninstall},
	} {
		if !t.Run(s.name, func(t *testing.T) { s.run(t, env) }) {
			t.FailNow()
		}
	}
}

// imageRef asks hack/image/images.sh for the name of one of its images.
func imageRef(t *testing.T, name string) (repo, tag string) {
	t.Helper()
	out, err := run(context.Background(), nil, "hack/image/images.sh", "ref", name)
	if err != nil {
		t.Fatal(err)
	}
	ref := strings.TrimSpace(out)
	i := strings.LastIndex(ref, ":")
	return ref[:i], ref[i+1:]
}

// installFleet: cert-manager, the chart with its basic NATS and Redis, an
// SMTP sink standing in for the smarthost, then config/samples — with the
// restricted Pod Security level enforced on both namespaces.
func installFleet(t *testing.T) {
	kubectl(t, "apply", "--server-side", "-f", "bin/cluster/cert-manager-crds.yaml")
	kubectl(t, "apply", "-f", "hack/cluster/manifests/cert-manager.yaml")
	kubectl(t, "-n", "cert-manager", "rollout", "status", "deploy/cert-manager", "--timeout=5m")

	for _, ns := range []string{systemNS, tenantNS} {
		kubectlIn(t, restrictedNamespace(ns), "apply", "-f", "-")
	}
	natsRepo, natsTag := imageRef(t, "nats")
	redisRepo, redisTag := imageRef(t, "redis")
	helm(t, "upgrade", "--install", "mailfleet", "charts/mailfleet", "-n", systemNS,
		"--set", "image.repository=mailfleet.test/mailfleet", "--set", "image.tag="+imageTag(t),
		"--set", "nats.enabled=true", "--set", "nats.image.repository="+natsRepo, "--set", "nats.image.tag="+natsTag,
		"--set", "redis.enabled=true", "--set", "redis.image.repository="+redisRepo, "--set", "redis.image.tag="+redisTag,
		"--wait", "--timeout", "10m")

	sinkRepo, sinkTag := imageRef(t, "smtpsink")
	kubectlIn(t, sinkManifest(sinkRepo+":"+sinkTag), "apply", "-n", tenantNS, "-f", "-")
	kubectl(t, "-n", tenantNS, "rollout", "status", "deploy/smtpsink", "--timeout=3m")

	kubectl(t, "apply", "-n", tenantNS, "-k", "config/samples")
	// The samples name a placeholder smarthost; here it is the sink. The
	// cluster's DNS has no zone for example.com to verify the samples'
	// SmtpDomain in (test/integration verifies and signs with one), so
	// the accounts' domains are taken as written.
	kubectl(t, "patch", "-n", tenantNS, "smtprelay", relay, "--type=merge", "-p",
		`{"spec":{"delivery":{"smarthost":{"host":"smtpsink.`+tenantNS+`.svc","port":2525,"tls":"None"}},"senderDomains":{"verification":"Optional"}}}`)
	// After a helm upgrade the relay's status is the previous operator's
	// until the new one reconciles: first wait for the relay pods to run
	// this image, then for Ready at the current generation.
	want := "mailfleet.test/mailfleet:" + imageTag(t)
	eventually(t, 5*time.Minute, func() error {
		// On a fresh install the operator has not made the Deployment yet.
		got, err := run(context.Background(), nil, kubectlBin, "get", "-n", tenantNS, "deploy", relay, "-o", "jsonpath={.spec.template.spec.containers[0].image}")
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("relay Deployment runs %q, want %q", got, want)
		}
		return nil
	})
	kubectl(t, "rollout", "status", "-n", tenantNS, "deploy/"+relay, "--timeout=10m")
	waitReady(t, "smtprelay", relay, 10*time.Minute)
	for _, name := range []string{"shop", "newsletter"} {
		waitReady(t, "smtpaccount", name, 5*time.Minute)
	}
	waitReady(t, "smtplabel", "shop-receipts", 5*time.Minute)
}

// waitReady waits for Ready=True observed at the object's current
// generation: `kubectl wait --for=condition=Ready` also takes a condition
// written for the spec before the last change.
func waitReady(t *testing.T, kind, name string, within time.Duration) {
	t.Helper()
	eventually(t, within, func() error {
		var obj struct {
			Metadata struct{ Generation int64 }
			Status   struct {
				Conditions []struct {
					Type, Status, Reason, Message string
					ObservedGeneration            int64
				}
			}
		}
		getJSON(t, &obj, "-n", tenantNS, kind, name)
		for _, c := range obj.Status.Conditions {
			if c.Type != "Ready" {
				continue
			}
			if c.Status == "True" && c.ObservedGeneration == obj.Metadata.Generation {
				return nil
			}
			return fmt.Errorf("%s %s: Ready=%s at generation %d of %d: %s: %s", kind, name, c.Status,
				c.ObservedGeneration, obj.Metadata.Generation, c.Reason, c.Message)
		}
		return fmt.Errorf("%s %s has no Ready condition", kind, name)
	})
}

func restrictedNamespace(ns string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata:
  name: %s
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
`, ns)
}

// sinkManifest: test/e2e/smtpsink as a Deployment and Service, restricted.
func sinkManifest(image string) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: smtpsink
spec:
  replicas: 1
  selector:
    matchLabels: {app: smtpsink}
  template:
    metadata:
      labels: {app: smtpsink}
    spec:
      automountServiceAccountToken: false
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        seccompProfile: {type: RuntimeDefault}
      containers:
        - name: sink
          image: %s
          imagePullPolicy: IfNotPresent
          ports:
            - {name: smtp, containerPort: 2525}
            - {name: http, containerPort: 8080}
          readinessProbe:
            httpGet: {path: /healthz, port: http}
            periodSeconds: 2
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {drop: [ALL]}
---
apiVersion: v1
kind: Service
metadata:
  name: smtpsink
spec:
  selector: {app: smtpsink}
  ports:
    - {name: smtp, port: 2525, targetPort: smtp}
    - {name: http, port: 8080, targetPort: http}
`, image)
}

// scenarioUninstall: `helm uninstall` removes the operator and the chart's
// NATS and Redis, and keeps what docs/install.md says it keeps: the CRDs,
// every SmtpRelay, SmtpAccount and SmtpLabel, the credentials Secrets (same
// keys), the relay Deployments, and the NATS volumes with the queue. The
// relays, their queue gone, stop taking mail (not Ready) rather than take
// mail they could lose. Installing again brings the same fleet back with
// the same credentials.
func scenarioUninstall(t *testing.T, env *fleetEnv) {
	key := secretValue(t, tenantNS, "shop-smtp-credentials", "password")
	start := time.Now()
	helm(t, "uninstall", "mailfleet", "-n", systemNS, "--wait", "--timeout", "5m")
	removed := time.Since(start)
	if out := strings.TrimSpace(kubectl(t, "get", "deploy,statefulset", "-n", systemNS, "-o", "name")); out != "" {
		t.Errorf("left in %s after uninstall:\n%s", systemNS, out)
	}
	for _, crd := range []string{"smtprelays", "smtpaccounts", "smtplabels"} {
		kubectl(t, "get", "crd", crd+".mailfleet.io")
	}
	// (The accounts scenario deleted the sample's newsletter account.)
	kubectl(t, "get", "-n", tenantNS, "smtprelay/"+relay, "smtpaccount/shop", "smtplabel/shop-receipts", "deployment/"+relay, "service/"+relay)
	if got := secretValue(t, tenantNS, "shop-smtp-credentials", "password"); got != key {
		t.Error("the account's key changed across uninstall")
	}
	pvcs := strings.Fields(kubectl(t, "get", "pvc", "-n", systemNS, "-o", "name"))
	if len(pvcs) != 3 {
		t.Errorf("NATS volumes after uninstall: %v, want the 3 of the StatefulSet kept", pvcs)
	}
	eventually(t, 2*time.Minute, func() error {
		if names, _ := relayPods(t); len(names) > 0 {
			return fmt.Errorf("relay pods %v still Ready without their queue", names)
		}
		return nil
	})
	unready := time.Since(start)

	if !t.Run("reinstall", installFleet) {
		t.FailNow()
	}
	waitServing(t, 2)
	back := time.Since(start)
	env.service = strings.TrimSpace(kubectl(t, "get", "-n", tenantNS, "service", relay, "-o", "jsonpath={.spec.clusterIP}"))
	env.pods = relayPodIPs(t)
	reply, err := submit(env, net.JoinHostPort(env.service, "587"), "shop", key, "e2e reinstalled")
	if err != nil || !strings.HasSuffix(reply, "#Queued") {
		t.Fatalf("after reinstall, with the key from before: %q %v", reply, err)
	}
	t.Logf("uninstalled in %v (CRDs, resources, Secrets, relay Deployment and %d NATS volumes kept); relays not Ready %v after; reinstalled and serving with the same key %v after",
		removed.Round(time.Millisecond), len(pvcs), unready.Round(time.Millisecond), back.Round(time.Millisecond))
}
