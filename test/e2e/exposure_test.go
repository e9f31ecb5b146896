//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// scenarioPodSpec: what the operator renders, as the kubelet runs it. The
// relay and its sidecar request CPU and memory (and use less than that
// idle), the termination grace covers the preStop sleep and the drain, and
// the PodDisruptionBudget allows one voluntary disruption at a time.
func scenarioPodSpec(t *testing.T, env *fleetEnv) {
	var deploy struct {
		Spec struct {
			Template struct {
				Spec struct {
					TerminationGracePeriodSeconds int64
					Containers, InitContainers    []podContainer
				}
			}
		}
	}
	getJSON(t, &deploy, "-n", tenantNS, "deploy", relay)
	pod := deploy.Spec.Template.Spec
	containers := append(append([]podContainer{}, pod.InitContainers...), pod.Containers...)
	requests := map[string][2]string{}
	for _, c := range containers {
		requests[c.Name] = [2]string{c.Resources.Requests["cpu"], c.Resources.Requests["memory"]}
	}
	want := map[string][2]string{"relay": {"100m", "128Mi"}, "ratelimit": {"50m", "64Mi"}}
	if fmt.Sprint(requests) != fmt.Sprint(want) {
		t.Errorf("requests (cpu, memory) by container = %v, want the defaults %v", requests, want)
	}
	// preStop 5 s + drain 30 s + 10 s to reply and close the queue.
	if pod.TerminationGracePeriodSeconds != 45 {
		t.Errorf("terminationGracePeriodSeconds = %d, want 45", pod.TerminationGracePeriodSeconds)
	}

	usage := containerMemory(t)
	for name, req := range want {
		limit := resource.MustParse(req[1])
		for _, used := range usage[name] {
			if used >= limit.Value() {
				t.Errorf("container %s uses %d MiB, at or over its request %s", name, used>>20, req[1])
			}
		}
	}

	var pdb struct {
		Status struct{ ExpectedPods, CurrentHealthy, DisruptionsAllowed int }
	}
	eventually(t, time.Minute, func() error {
		getJSON(t, &pdb, "-n", tenantNS, "pdb", relay)
		if s := pdb.Status; s.ExpectedPods != 2 || s.CurrentHealthy != 2 || s.DisruptionsAllowed != 1 {
			return fmt.Errorf("PodDisruptionBudget status %+v, want 2 expected, 2 healthy, 1 disruption allowed", s)
		}
		return nil
	})
	t.Logf("requests %v; working set in MiB by container %v; termination grace %ds; PDB %+v",
		requests, mib(usage), pod.TerminationGracePeriodSeconds, pdb.Status)
}

type podContainer struct {
	Name      string
	Resources struct{ Requests, Limits map[string]string }
}

// containerMemory reads each relay container's working set from the
// kubelet's summary API (what `kubectl top` shows with metrics-server).
func containerMemory(t *testing.T) map[string][]int64 {
	t.Helper()
	node := strings.TrimSpace(kubectl(t, "get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"))
	var summary struct {
		Pods []struct {
			PodRef     struct{ Name, Namespace string }
			Containers []struct {
				Name   string
				Memory struct{ WorkingSetBytes int64 }
			}
		}
	}
	out := kubectl(t, "get", "--raw", "/api/v1/nodes/"+node+"/proxy/stats/summary")
	if err := json.Unmarshal([]byte(out), &summary); err != nil {
		t.Fatal(err)
	}
	names, _ := relayPods(t)
	usage := map[string][]int64{}
	for _, p := range summary.Pods {
		for _, n := range names {
			if p.PodRef.Namespace == tenantNS && p.PodRef.Name == n {
				for _, c := range p.Containers {
					usage[c.Name] = append(usage[c.Name], c.Memory.WorkingSetBytes)
				}
			}
		}
	}
	if len(usage) == 0 {
		t.Fatal("the kubelet's summary has no relay containers")
	}
	return usage
}

func mib(usage map[string][]int64) map[string][]int64 {
	out := map[string][]int64{}
	for k, vs := range usage {
		for _, v := range vs {
			out[k] = append(out[k], v>>20)
		}
	}
	return out
}

// scenarioEvictions: a node drain's evictions, under load. The first relay
// pod is evicted; the second is refused while the first's replacement is
// not Ready (the PodDisruptionBudget), and evicted once it is. Clients see
// no session cut after DATA and every acknowledged message is delivered.
func scenarioEvictions(t *testing.T, env *fleetEnv) {
	key := prepareLoad(t, env)
	names, _ := relayPods(t)
	if len(names) != 2 {
		t.Fatalf("relay pods serving: %v, want 2", names)
	}
	runName := fmt.Sprintf("evict%d", time.Now().Unix())
	finish := startLoad(env, key, runName)
	defer finish()
	time.Sleep(3 * time.Second)

	evict := evictor(t)
	start := time.Now()
	if err := evict(names[0]); err != nil {
		t.Fatalf("evict %s: %v", names[0], err)
	}
	err := evict(names[1])
	if err == nil || !strings.Contains(err.Error(), "disruption budget") {
		t.Fatalf("second eviction while the first pod's replacement is not Ready: %v, want a refusal naming the disruption budget", err)
	}
	refusedAfter := time.Since(start)
	waitServing(t, 2, names[0])
	replaced := time.Since(start)
	if err := evict(names[1]); err != nil {
		t.Fatalf("evict %s once the PodDisruptionBudget allows it: %v", names[1], err)
	}
	waitServing(t, 2, names[0], names[1])
	done := time.Since(start)
	time.Sleep(3 * time.Second)
	res := finish()
	t.Logf("evicted %s; second eviction refused by the PodDisruptionBudget %v later; replacement Ready after %v; both pods replaced in %v; %d acknowledged, %d sessions reopened (%v), %d cut after DATA",
		names[0], refusedAfter.Round(time.Millisecond), replaced.Round(time.Millisecond), done.Round(time.Millisecond),
		len(res.acked), res.errs, res.refused, res.cut)
	if res.cut > 0 {
		t.Errorf("%d messages had their session cut after DATA with no reply", res.cut)
	}
	checkDelivered(t, env, runName, res, 5*time.Minute)
	env.pods = relayPodIPs(t)
}

// evictor returns a function that asks the API server to evict a relay
// pod, as `kubectl drain` does. It calls the API directly: the second
// eviction must reach the server before the first pod's replacement is
// Ready, and starting a kubectl process on a loaded machine has taken
// seconds.
func evictor(t *testing.T) func(pod string) error {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return func(pod string) error {
		return cs.PolicyV1().Evictions(tenantNS).Evict(context.Background(), &policyv1.Eviction{
			ObjectMeta: metav1.ObjectMeta{Name: pod, Namespace: tenantNS},
		})
	}
}

// waitServing waits until n relay pods serve and none of them is one of
// gone.
func waitServing(t *testing.T, n int, gone ...string) {
	t.Helper()
	eventually(t, 3*time.Minute, func() error {
		names, _ := relayPods(t)
		for _, name := range names {
			for _, g := range gone {
				if name == g {
					return fmt.Errorf("pod %s still serves", g)
				}
			}
		}
		if len(names) != n {
			return fmt.Errorf("%d relay pods serve (%v), want %d", len(names), names, n)
		}
		return nil
	})
}

// Addresses of the client network the service scenario creates: a network
// namespace joined to the host by a veth pair, as a client outside the
// cluster reaching a node would be.
const (
	clientVethH  = "mfe2e-h"
	clientVethNS = "mfe2e-c"
	clientHostIP = "10.250.9.1"
	clientIP     = "10.250.9.2"
	nodeIP       = "10.250.0.1"
)

// scenarioService: the relay exposed as a cloud user would, with
// spec.service type LoadBalancer and an annotation for the load balancer
// controller. With the default externalTrafficPolicy Local, a client
// outside the cluster that reaches a node's port keeps its own address (the
// relay records it in the Received header); with Cluster it is masked by a
// node's. Back to ClusterIP, the node ports are released.
func scenarioService(t *testing.T, env *fleetEnv) {
	in := clientNetwork(t)
	t.Cleanup(func() {
		kubectl(t, "patch", "smtprelay", "-n", tenantNS, relay, "--type=merge", "-p", `{"spec":{"service":null}}`)
	})
	kubectl(t, "patch", "smtprelay", "-n", tenantNS, relay, "--type=merge", "-p",
		`{"spec":{"service":{"type":"LoadBalancer","annotations":{"service.beta.kubernetes.io/aws-load-balancer-type":"nlb"}}}}`)
	svc := waitService(t, "LoadBalancer", "Local")
	if got := svc.Metadata.Annotations["service.beta.kubernetes.io/aws-load-balancer-type"]; got != "nlb" {
		t.Errorf("Service annotation = %q, want nlb", got)
	}
	if svc.Spec.HealthCheckNodePort == 0 {
		t.Error("a LoadBalancer Service with policy Local has no healthCheckNodePort for the load balancer to probe")
	}
	port := svc.nodePort(587)
	local := submitFromClient(t, env, in, port, "e2e service local")
	if !strings.Contains(local, "(["+clientIP+"])") {
		t.Errorf("with externalTrafficPolicy Local the relay saw %q, want the client's %s", local, clientIP)
	}

	kubectl(t, "patch", "smtprelay", "-n", tenantNS, relay, "--type=merge", "-p", `{"spec":{"service":{"externalTrafficPolicy":"Cluster"}}}`)
	svc = waitService(t, "LoadBalancer", "Cluster")
	// kube-proxy programs the changed policy a moment after the Service
	// changes; until then connections keep the Local rules.
	var masked string
	for i := 0; ; i++ {
		masked = submitFromClient(t, env, in, svc.nodePort(587), fmt.Sprintf("e2e service cluster %d", i))
		if !strings.Contains(masked, clientIP) {
			break
		}
		if i == 20 {
			t.Fatalf("with externalTrafficPolicy Cluster the relay still sees the client's own address: %q", masked)
		}
		time.Sleep(time.Second)
	}

	kubectl(t, "patch", "smtprelay", "-n", tenantNS, relay, "--type=merge", "-p", `{"spec":{"service":null}}`)
	svc = waitService(t, "ClusterIP", "")
	if p := svc.nodePort(587); p != 0 {
		t.Errorf("back to ClusterIP the Service still holds node port %d", p)
	}
	if _, ok := svc.Metadata.Annotations["service.beta.kubernetes.io/aws-load-balancer-type"]; ok {
		t.Error("the annotation removed from spec.service stays on the Service")
	}
	t.Logf("LoadBalancer, node port %d: Local keeps the client: %s; Cluster masks it: %s; back to ClusterIP without node ports",
		port, local, masked)
}

type serviceJSON struct {
	Metadata struct{ Annotations map[string]string }
	Spec     struct {
		Type                  string
		ExternalTrafficPolicy string
		HealthCheckNodePort   int
		Ports                 []struct{ Port, NodePort int }
	}
}

func (s *serviceJSON) nodePort(port int) int {
	for _, p := range s.Spec.Ports {
		if p.Port == port {
			return p.NodePort
		}
	}
	return 0
}

// waitService waits until the relay's Service has the type and policy.
func waitService(t *testing.T, typ, policy string) *serviceJSON {
	t.Helper()
	var svc serviceJSON
	eventually(t, time.Minute, func() error {
		svc = serviceJSON{}
		getJSON(t, &svc, "-n", tenantNS, "service", relay)
		if svc.Spec.Type != typ || svc.Spec.ExternalTrafficPolicy != policy {
			return fmt.Errorf("Service type %q policy %q, want %q %q", svc.Spec.Type, svc.Spec.ExternalTrafficPolicy, typ, policy)
		}
		return nil
	})
	return &svc
}

// clientNetwork creates the client's network namespace and returns the
// command prefix that runs a program in it; the namespace goes when the
// test ends. The namespace belongs to a process of the test's own rather
// than to `ip netns add`, which would turn /run/netns into a mount point of
// its own and hide the pods' network namespaces from containerd.
func clientNetwork(t *testing.T) []string {
	t.Helper()
	holder := exec.Command("unshare", "--net", "--", "sleep", "infinity")
	holder.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		holder.Process.Kill()
		holder.Wait()
		run(context.Background(), nil, "ip", "link", "del", clientVethH)
	})
	pid := strconv.Itoa(holder.Process.Pid)
	in := []string{"nsenter", "--target", pid, "--net", "--"}
	ip := func(netns bool, args ...string) {
		t.Helper()
		cmd := append([]string{"ip"}, args...)
		if netns {
			cmd = slices.Concat(in, cmd)
		}
		// unshare may not have entered the new namespace yet: retry briefly.
		eventually(t, 5*time.Second, func() error {
			_, err := run(context.Background(), nil, cmd[0], cmd[1:]...)
			return err
		})
	}
	run(context.Background(), nil, "ip", "link", "del", clientVethH)
	ip(false, "link", "add", clientVethH, "type", "veth", "peer", "name", clientVethNS)
	ip(false, "link", "set", clientVethNS, "netns", pid)
	ip(false, "addr", "add", clientHostIP+"/30", "dev", clientVethH)
	ip(false, "link", "set", clientVethH, "up")
	ip(true, "addr", "add", clientIP+"/30", "dev", clientVethNS)
	ip(true, "link", "set", clientVethNS, "up")
	ip(true, "link", "set", "lo", "up")
	ip(true, "route", "add", "default", "via", clientHostIP)
	return in
}

var receivedFrom = regexp.MustCompile(`^from \S+ \(\[[^]]+\]\)`)

// submitFromClient sends one message with swaks from the client's network
// namespace to the node's port and returns the "from" clause of the
// Received header the relay wrote, as the sink got it.
func submitFromClient(t *testing.T, env *fleetEnv, in []string, nodePort int, subject string) string {
	t.Helper()
	key := secretValue(t, tenantNS, "shop-smtp-credentials", "password")
	addr := net.JoinHostPort(nodeIP, fmt.Sprint(nodePort))
	var out string
	// kube-proxy programs a changed Service within a second or so.
	eventually(t, time.Minute, func() error {
		var err error
		args := slices.Concat(in[1:], []string{"swaks", "--server", addr,
			"--tls", "--tls-verify", "--tls-ca-path", env.caFile, "--tls-sni", "smtp.example.com", "--ehlo", "client.example.net",
			"--auth", "LOGIN", "--auth-user", "shop", "--auth-password", key, "--timeout", "10",
			"--from", "orders@example.com", "--to", "buyer@example.org", "--header", "Subject: " + subject})
		out, err = run(context.Background(), nil, in[0], args...)
		return redact(err, key)
	})
	if !regexp.MustCompile(`(?m)^<~  250 2\.0\.0 #[^#\s]+#Queued$`).MatchString(out) {
		t.Fatalf("swaks from %s: no 250 2.0.0 #<id>#Queued in\n%s", clientIP, out)
	}
	var got []sinkMessage
	eventually(t, time.Minute, func() error {
		if got = sinkMessages(t, env, subject); len(got) == 0 {
			return fmt.Errorf("%q not at the sink yet", subject)
		}
		return nil
	})
	for _, r := range got[len(got)-1].Headers["Received"] {
		r = strings.Join(strings.Fields(r), " ")
		if m := receivedFrom.FindString(r); m != "" && strings.Contains(r, "(mailfleet)") {
			return m
		}
	}
	t.Fatalf("no Received header of the relay in %v", got[len(got)-1].Headers["Received"])
	return ""
}
