package samples

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	jsonserializer "k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crzap "sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/yaml"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/controllers"
	"github.com/mailfleet/mailfleet/controllers/render"
	"github.com/mailfleet/mailfleet/internal/envtestkit"
)

// The manifests people copy and deploy: config/samples, and the kustomize
// bases config/crd, config/rbac, config/manager and config/default. They
// are tested as they are written, against a real API server with the
// operator's controllers, so a renamed field, a stricter CRD rule or a
// missing RBAC verb fails here and not in a user's cluster.
const (
	configRoot        = "../../config"
	samplesDir        = "../../config/samples"
	operatorNamespace = "mailfleet-system"
	operatorName      = "mailfleet-operator"
	// operatorLeaseName is cmd/mailfleet's LeaderElectionID.
	operatorLeaseName = "mailfleet-operator.mailfleet.io"
	operatorContainer = "manager"
	// sampleWait bounds each wait for the controllers in the samples test;
	// waits end as soon as their check passes.
	sampleWait = 20 * time.Second
)

// kustomization is the part of a kustomization.yaml these tests read. It is
// decoded strictly, as kustomize itself does, so a misspelt key fails;
// add fields here when a kustomization starts using them.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace,omitempty"`
	NamePrefix string   `json:"namePrefix,omitempty"`
	Resources  []string `json:"resources,omitempty"`
	Components []string `json:"components,omitempty"`
	// Values the tests do not look into.
	Images            []any             `json:"images,omitempty"`
	Replacements      []any             `json:"replacements,omitempty"`
	Patches           []any             `json:"patches,omitempty"`
	Labels            []any             `json:"labels,omitempty"`
	CommonAnnotations map[string]string `json:"commonAnnotations,omitempty"`
}

func readKustomization(t *testing.T, dir string) kustomization {
	t.Helper()
	path := filepath.Join(dir, "kustomization.yaml")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var k kustomization
	if err := yaml.UnmarshalStrict(data, &k); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		t.Fatalf("%s: apiVersion/kind = %s/%s, want kustomize.config.k8s.io/v1beta1/Kustomization", path, k.APIVersion, k.Kind)
	}
	return k
}

// manifestDoc is one YAML document of a manifest file.
type manifestDoc struct {
	file string
	raw  []byte // the document as written, for strict typed decoding
	obj  *unstructured.Unstructured
}

func (d manifestDoc) String() string {
	return fmt.Sprintf("%s (%s %s)", d.file, d.obj.GetKind(), d.obj.GetName())
}

// splitManifests decodes a stream of YAML documents; documents holding only
// comments are skipped.
func splitManifests(t *testing.T, name string, data []byte) []manifestDoc {
	t.Helper()
	decoded, err := envtestkit.DecodeYAML(data)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	docs := make([]manifestDoc, len(decoded))
	for i, d := range decoded {
		docs[i] = manifestDoc{file: name, raw: d.Raw, obj: d.Object}
	}
	return docs
}

func readManifests(t *testing.T, path string) []manifestDoc {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return splitManifests(t, path, data)
}

// kustomizeFiles returns the manifest files a kustomization includes,
// following directories that are kustomizations themselves, in order.
func kustomizeFiles(t *testing.T, dir string) []string {
	t.Helper()
	var files []string
	for _, r := range readKustomization(t, dir).Resources {
		path := filepath.Join(dir, r)
		st, err := os.Stat(path)
		if err != nil {
			t.Fatalf("%s/kustomization.yaml lists %s: %v", dir, r, err)
		}
		if st.IsDir() {
			files = append(files, kustomizeFiles(t, path)...)
			continue
		}
		files = append(files, path)
	}
	return files
}

// strictDecoder decodes into the operator's types and refuses unknown and
// duplicate fields, as `kubectl apply` (field validation Strict) would.
func strictDecoder() runtime.Decoder {
	s := controllers.Scheme()
	return jsonserializer.NewSerializerWithOptions(jsonserializer.DefaultMetaFactory, s, s,
		jsonserializer.SerializerOptions{Yaml: true, Strict: true})
}

// TestConfigManifestsDecode reads every hand-written manifest under config/
// (the CRDs in config/crd/bases are generated and loaded by the suite) and
// checks that each document is a kind the operator's scheme knows, with
// no field its type lacks, and that every kustomization lists exactly the
// files beside it.
func TestConfigManifestsDecode(t *testing.T) {
	scheme, decoder := controllers.Scheme(), strictDecoder()
	generatedCRDs := filepath.Join(configRoot, "crd", "bases")
	var kustomizationDirs []string
	err := filepath.WalkDir(configRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path == generatedCRDs {
				return filepath.SkipDir
			}
			return nil
		}
		if ext := filepath.Ext(path); ext != ".yaml" && ext != ".yml" {
			return nil
		}
		if d.Name() == "kustomization.yaml" {
			kustomizationDirs = append(kustomizationDirs, filepath.Dir(path))
			return nil
		}
		t.Run(strings.TrimPrefix(path, configRoot+"/"), func(t *testing.T) {
			docs := readManifests(t, path)
			if len(docs) == 0 {
				t.Fatal("no manifests in the file")
			}
			for _, d := range docs {
				gvk := d.obj.GroupVersionKind()
				if !scheme.Recognizes(gvk) {
					t.Errorf("%s: kind %s is not one the operator's scheme knows", d, gvk)
					continue
				}
				if _, _, err := decoder.Decode(d.raw, nil, nil); err != nil {
					t.Errorf("%s: %v", d, err)
				}
				if d.obj.GetName() == "" {
					t.Errorf("%s: no metadata.name", d)
				}
				if filepath.Dir(path) == samplesDir && d.obj.GetNamespace() != "" {
					t.Errorf("%s: sets a namespace; samples leave it out, so that `kubectl apply -k config/samples -n <ns>` decides", d)
				}
			}
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(kustomizationDirs) == 0 {
		t.Fatal("no kustomization.yaml under config/")
	}
	for _, dir := range kustomizationDirs {
		t.Run(strings.TrimPrefix(dir, configRoot+"/")+"/kustomization.yaml", func(t *testing.T) {
			checkKustomizationComplete(t, dir)
		})
	}
}

// checkKustomizationComplete fails when a manifest beside a kustomization
// (or below it, down to the next kustomization) is not listed: it would be
// left out of `kubectl apply -k` and of these tests without anyone noticing.
func checkKustomizationComplete(t *testing.T, dir string) {
	t.Helper()
	listed := map[string]bool{}
	for _, r := range readKustomization(t, dir).Resources {
		path := filepath.Join(dir, r)
		if _, err := os.Stat(path); err != nil {
			t.Errorf("resource %s: %v", r, err)
		}
		listed[path] = true
	}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != dir && exists(filepath.Join(path, "kustomization.yaml")) {
				return filepath.SkipDir
			}
			return nil
		}
		if ext := filepath.Ext(path); (ext == ".yaml" || ext == ".yml") && d.Name() != "kustomization.yaml" && !listed[path] {
			t.Errorf("%s is not listed in %s/kustomization.yaml", path, dir)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	kustomizeBuild(t, dir) // fails on anything kustomize itself refuses
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// TestConfigProjectFile keeps PROJECT in step with the API: its group and
// version are api/v1alpha1's, and it lists exactly the kinds registered there.
func TestConfigProjectFile(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "PROJECT"))
	if err != nil {
		t.Fatal(err)
	}
	var project struct {
		Domain      string   `json:"domain"`
		Layout      []string `json:"layout"`
		ProjectName string   `json:"projectName"`
		Repo        string   `json:"repo"`
		Version     string   `json:"version"`
		Resources   []struct {
			API struct {
				CRDVersion string `json:"crdVersion"`
				Namespaced bool   `json:"namespaced"`
			} `json:"api"`
			Controller bool   `json:"controller"`
			Domain     string `json:"domain"`
			Group      string `json:"group"`
			Kind       string `json:"kind"`
			Path       string `json:"path"`
			Version    string `json:"version"`
		} `json:"resources"`
	}
	if err := yaml.UnmarshalStrict(data, &project); err != nil {
		t.Fatalf("PROJECT: %v", err)
	}
	if project.Version != "3" || !slices.Equal(project.Layout, []string{"go.kubebuilder.io/v4"}) || project.Repo != "github.com/mailfleet/mailfleet" {
		t.Errorf("PROJECT version %q, layout %v, repo %q", project.Version, project.Layout, project.Repo)
	}
	var kinds []string
	for _, r := range project.Resources {
		kinds = append(kinds, r.Kind)
		if g := r.Group + "." + r.Domain; g != v1.GroupVersion.Group || r.Version != v1.GroupVersion.Version {
			t.Errorf("%s: group %s version %s, want %s", r.Kind, g, r.Version, v1.GroupVersion)
		}
		if r.Path != "github.com/mailfleet/mailfleet/api/v1alpha1" || r.API.CRDVersion != "v1" || !r.API.Namespaced || !r.Controller {
			t.Errorf("%s: %+v", r.Kind, r)
		}
	}
	// The group version also holds the option types every API group
	// registers; only the kinds declared in api/v1alpha1 count.
	apiPackage := reflect.TypeFor[v1.SmtpRelay]().PkgPath()
	var apiKinds []string
	for kind, typ := range controllers.Scheme().KnownTypes(v1.GroupVersion) {
		if typ.PkgPath() == apiPackage && !strings.HasSuffix(kind, "List") {
			apiKinds = append(apiKinds, kind)
		}
	}
	slices.Sort(kinds)
	slices.Sort(apiKinds)
	if !slices.Equal(kinds, apiKinds) {
		t.Errorf("PROJECT lists %v, api/v1alpha1 registers %v", kinds, apiKinds)
	}
}

// TestSamplesReady applies every sample to a fresh namespace with all the
// operator's controllers running, plays cert-manager and the Deployment
// controller (envtest runs neither), and waits until every sample
// SmtpRelay, SmtpAccount and SmtpLabel is Ready.
func TestSamplesReady(t *testing.T) {
	ns := env.Namespace(t, nil)
	env.StartManager(t, func(mgr ctrl.Manager) error {
		return controllers.Setup(mgr, render.Options{Image: "mailfleet:test"}, controllers.DomainOptions{})
	})

	var docs []manifestDoc
	for _, f := range kustomizeFiles(t, samplesDir) {
		docs = append(docs, readManifests(t, f)...)
	}
	if len(docs) == 0 {
		t.Fatal("config/samples lists no manifests")
	}
	for _, d := range docs {
		obj := d.obj.DeepCopy()
		obj.SetNamespace(ns)
		// Strict, as kubectl applies: an unknown field is an error, not a
		// warning that nobody reads.
		if err := env.Client.Create(context.Background(), obj, client.FieldValidation(metav1.FieldValidationStrict)); err != nil {
			t.Fatalf("%s: %v", d, err)
		}
		// envtest runs no garbage collector or namespace controller:
		// deleting the samples keeps later tests' controllers off them.
		t.Cleanup(func() { env.Client.Delete(context.Background(), obj) })
	}

	byKind := func(kind string) []*unstructured.Unstructured {
		var out []*unstructured.Unstructured
		for _, d := range docs {
			if d.obj.GetKind() == kind {
				out = append(out, d.obj)
			}
		}
		return out
	}
	relays := byKind("SmtpRelay")
	if len(relays) == 0 || len(byKind("SmtpAccount")) == 0 || len(byKind("SmtpLabel")) == 0 {
		t.Fatalf("the samples should show every kind: %d SmtpRelays, %d SmtpAccounts, %d SmtpLabels",
			len(relays), len(byKind("SmtpAccount")), len(byKind("SmtpLabel")))
	}

	// cert-manager: the samples' own Certificates (the CA), then each
	// relay's, which the operator creates under the relay's name.
	var certNames []string
	for _, c := range byKind("Certificate") {
		certNames = append(certNames, c.GetName())
	}
	for _, r := range relays {
		if _, found, _ := unstructured.NestedMap(r.Object, "spec", "tls", "issuerRef"); found {
			certNames = append(certNames, r.GetName())
		}
	}
	cm := &envtestkit.CertManager{Client: env.Client, Namespace: ns, Wait: sampleWait}
	if err := cm.IssueAll(context.Background(), certNames...); err != nil {
		t.Fatal(err)
	}

	// The Deployment controller: every relay pod ready.
	for _, r := range relays {
		d := &appsv1.Deployment{}
		envtestkit.Eventually(t, sampleWait, func() error { return env.Get(d, ns, r.GetName()) })
		env.MarkDeploymentReady(t, ns, r.GetName())
	}

	for _, d := range docs {
		switch d.obj.GetKind() {
		case "SmtpRelay", "SmtpAccount", "SmtpLabel":
			if d.obj.GroupVersionKind().Group == v1.GroupVersion.Group {
				t.Run(d.obj.GetKind()+"/"+d.obj.GetName(), func(t *testing.T) { waitSampleReady(t, d, ns) })
			}
		}
	}
	if t.Failed() {
		return // the credentials of a sample that is not Ready say nothing new
	}
	checkSampleCredentials(t, ns, byKind("SmtpAccount"), byKind("SmtpLabel"))

	// The ACCOUNTS column of `kubectl get smtprelay`, which
	// docs/quickstart.md shows: every sample account is published.
	for _, r := range relays {
		want := int32(0)
		for _, a := range byKind("SmtpAccount") {
			if name, _, _ := unstructured.NestedString(a.Object, "spec", "relayRef", "name"); name == r.GetName() {
				want++
			}
		}
		envtestkit.Eventually(t, sampleWait, func() error {
			live := &v1.SmtpRelay{}
			if err := env.Get(live, ns, r.GetName()); err != nil {
				return err
			}
			if live.Status.Accounts != want {
				return fmt.Errorf("relay %s: status.accounts = %d, want %d", r.GetName(), live.Status.Accounts, want)
			}
			return nil
		})
	}
}

// waitSampleReady waits for Ready=True at the object's current generation;
// on timeout the error shows the condition, whose reason and message say
// what the sample lacks.
func waitSampleReady(t *testing.T, d manifestDoc, ns string) {
	t.Helper()
	live := &unstructured.Unstructured{}
	live.SetGroupVersionKind(d.obj.GroupVersionKind())
	envtestkit.Eventually(t, sampleWait, func() error {
		if err := env.Get(live, ns, d.obj.GetName()); err != nil {
			return err
		}
		raw, _, err := unstructured.NestedSlice(live.Object, "status", "conditions")
		if err != nil {
			return err
		}
		var conds []metav1.Condition
		for _, r := range raw {
			var c metav1.Condition
			if m, ok := r.(map[string]any); ok && runtime.DefaultUnstructuredConverter.FromUnstructured(m, &c) == nil {
				conds = append(conds, c)
			}
		}
		c := meta.FindStatusCondition(conds, v1.ConditionReady)
		if c == nil || c.Status != metav1.ConditionTrue || c.ObservedGeneration != live.GetGeneration() {
			return fmt.Errorf("%s: Ready condition %+v, want True at generation %d", d, c, live.GetGeneration())
		}
		// A sample's webhooks are all published: their Secrets are samples too.
		if hooks, _, _ := unstructured.NestedSlice(live.Object, "spec", "webhooks"); len(hooks) > 0 {
			if w := meta.FindStatusCondition(conds, v1.ConditionWebhooksReady); w == nil || w.Status != metav1.ConditionTrue {
				return fmt.Errorf("%s: WebhooksReady condition %+v, want True", d, w)
			}
		}
		return nil
	})
}

// checkSampleCredentials checks what an application would read: each
// account's credentials Secret has its username and a key, a secretRef
// account's key is the referenced one, and each label's username is listed.
func checkSampleCredentials(t *testing.T, ns string, accounts, labels []*unstructured.Unstructured) {
	t.Helper()
	secrets := map[string]string{} // account name -> credentials Secret
	apiUsers := map[string]string{}
	for _, u := range accounts {
		acc := &v1.SmtpAccount{}
		if err := env.Get(acc, ns, u.GetName()); err != nil {
			t.Fatal(err)
		}
		secrets[acc.Name], apiUsers[acc.Name] = acc.Status.SecretName, acc.Status.APIUser
		s := env.GetSecret(t, ns, acc.Status.SecretName)
		if got := string(s.Data[render.SecretKeyUsername]); got != acc.Status.APIUser || got == "" {
			t.Errorf("account %s: Secret %s username %q, want %q", acc.Name, s.Name, got, acc.Status.APIUser)
		}
		if len(s.Data[render.SecretKeyPassword]) == 0 {
			t.Errorf("account %s: Secret %s has no password", acc.Name, s.Name)
		}
		if ref := acc.Spec.Key.SecretRef; ref != nil {
			src := env.GetSecret(t, ns, ref.Name)
			if !bytes.Equal(s.Data[render.SecretKeyPassword], src.Data[ref.Key]) {
				t.Errorf("account %s: password differs from Secret %s key %s", acc.Name, ref.Name, ref.Key)
			}
		}
	}
	for _, u := range labels {
		l := &v1.SmtpLabel{}
		if err := env.Get(l, ns, u.GetName()); err != nil {
			t.Fatal(err)
		}
		if secrets[l.Spec.AccountRef] == "" {
			t.Errorf("label %s: account %q is not among the samples", l.Name, l.Spec.AccountRef)
			continue
		}
		want := apiUsers[l.Spec.AccountRef] + "#" + l.Spec.LabelID
		key := render.SecretKeyLabelUsernamePrefix + l.Spec.LabelID
		env.WaitSecret(t, sampleWait, ns, secrets[l.Spec.AccountRef], func(s *corev1.Secret) error {
			if got := string(s.Data[key]); got != want {
				return fmt.Errorf("label %s: Secret %s %s = %q, want %q", l.Name, s.Name, key, got, want)
			}
			return nil
		})
	}
}

// configDefaultManifests is config/default as it would be deployed: built by
// kustomize (kubectl's, which hack/build-envtest.sh puts beside the API
// server) when it is there, else the listed files as written.
func configDefaultManifests(t *testing.T) []manifestDoc {
	t.Helper()
	dir := filepath.Join(configRoot, "default")
	if out, ok := kustomizeBuild(t, dir); ok {
		return splitManifests(t, "kustomize build config/default", out)
	}
	t.Logf("no kubectl in KUBEBUILDER_ASSETS: using the files config/default lists, without kustomize's transformations")
	var docs []manifestDoc
	for _, f := range kustomizeFiles(t, dir) {
		docs = append(docs, readManifests(t, f)...)
	}
	return docs
}

// kustomizeBuild runs kustomize as `kubectl kustomize` (kubectl is built
// beside the API server by hack/build-envtest.sh); false when there is no
// kubectl there.
func kustomizeBuild(t *testing.T, dir string) ([]byte, bool) {
	t.Helper()
	kubectl := filepath.Join(os.Getenv("KUBEBUILDER_ASSETS"), "kubectl")
	if !exists(kubectl) {
		return nil, false
	}
	cmd := exec.Command(kubectl, "kustomize", dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, stderr.String())
	}
	return out, true
}

// TestConfigDefault deploys config/default to the API server: the namespace
// for real, then every object as a server-side dry run, so the API server's
// validation and admission judge them; then the operator's RBAC for real,
// and a manager running as the operator's ServiceAccount wins leader
// election with it.
func TestConfigDefault(t *testing.T) {
	ctx := context.Background()
	docs := configDefaultManifests(t)
	var deployment *appsv1.Deployment
	var rbacObjs []*unstructured.Unstructured
	crds := map[string]bool{}
	for _, d := range docs {
		gvk := d.obj.GroupVersionKind()
		switch {
		case gvk.Kind == "CustomResourceDefinition":
			// The package's API server already holds these (loaded from
			// config/crd/bases), so a create would only say AlreadyExists.
			crds[d.obj.GetName()] = true
			continue
		case gvk.Kind == "Namespace":
			if d.obj.GetName() != operatorNamespace {
				t.Errorf("%s: want only namespace %s", d, operatorNamespace)
			}
			ns := d.obj.DeepCopy()
			if err := env.Client.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatalf("%s: %v", d, err)
			}
			continue
		case gvk.Group == "rbac.authorization.k8s.io" || gvk.Kind == "ServiceAccount":
			rbacObjs = append(rbacObjs, d.obj)
		case gvk.Kind == "Deployment":
			deployment = &appsv1.Deployment{}
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(d.obj.Object, deployment); err != nil {
				t.Fatalf("%s: %v", d, err)
			}
		}
		if namespaced, err := env.Client.IsObjectNamespaced(d.obj); err != nil {
			t.Fatalf("%s: %v", d, err)
		} else if namespaced && d.obj.GetNamespace() != operatorNamespace {
			t.Errorf("%s: namespace %q, want %s", d, d.obj.GetNamespace(), operatorNamespace)
		}
		if err := env.Client.Create(ctx, d.obj.DeepCopy(), client.DryRunAll, client.FieldValidation(metav1.FieldValidationStrict)); err != nil {
			t.Errorf("%s: server-side dry run: %v", d, err)
		}
	}
	for _, name := range []string{"smtprelays.mailfleet.io", "smtpaccounts.mailfleet.io", "smtplabels.mailfleet.io"} {
		if !crds[name] {
			t.Errorf("config/default lacks CRD %s", name)
		}
	}
	if deployment == nil {
		t.Fatal("config/default has no Deployment")
	}
	if t.Failed() {
		t.FailNow()
	}
	checkOperatorDeployment(t, deployment)

	// The rest needs the ServiceAccount and RBAC to exist: the
	// ServiceAccount admission plugin refuses a pod whose account is missing.
	for _, obj := range rbacObjs {
		obj := obj.DeepCopy()
		if err := env.Client.Create(ctx, obj); err != nil {
			t.Fatalf("create %s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
		t.Cleanup(func() { env.Client.Delete(context.Background(), obj) })
	}
	t.Run("pod admitted under restricted", func(t *testing.T) { checkOperatorPodAdmitted(t, deployment) })
	t.Run("leader election as the operator's ServiceAccount", func(t *testing.T) {
		checkOperatorLeaderElection(t, deployment.Spec.Template.Spec.ServiceAccountName)
	})
}

// checkOperatorDeployment checks what the API server cannot: the wiring
// between the Deployment and cmd/mailfleet's flags.
func checkOperatorDeployment(t *testing.T, d *appsv1.Deployment) {
	t.Helper()
	var c *corev1.Container
	for i := range d.Spec.Template.Spec.Containers {
		if d.Spec.Template.Spec.Containers[i].Name == operatorContainer {
			c = &d.Spec.Template.Spec.Containers[i]
		}
	}
	if c == nil {
		t.Fatalf("no container %q (config/default's image replacement selects it by name)", operatorContainer)
	}
	if len(c.Args) == 0 || c.Args[0] != "operator" || !slices.Contains(c.Args, "--leader-elect") {
		t.Errorf("args %v, want the operator subcommand with --leader-elect", c.Args)
	}
	var image string
	for _, e := range c.Env {
		if e.Name == "MAILFLEET_IMAGE" {
			image = e.Value
		}
	}
	if image != c.Image {
		t.Errorf("MAILFLEET_IMAGE = %q, container image %q: relay pods would run another version than the operator", image, c.Image)
	}
	if d.Spec.Template.Spec.ServiceAccountName != operatorName {
		t.Errorf("serviceAccountName %q, want %s", d.Spec.Template.Spec.ServiceAccountName, operatorName)
	}
	probes := map[string]*corev1.Probe{"/healthz": c.LivenessProbe, "/readyz": c.ReadinessProbe}
	for path, p := range probes {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != path {
			t.Errorf("probe for %s: %+v", path, p)
		}
	}
}

// checkOperatorPodAdmitted submits, as a dry run, the pod the Deployment
// would make to the operator namespace, which enforces PodSecurity
// "restricted" by its own label. A pod that adds a capability is refused
// first, to show the namespace enforces.
func checkOperatorPodAdmitted(t *testing.T, d *appsv1.Deployment) {
	t.Helper()
	pod := func(name string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: operatorNamespace, Labels: d.Spec.Template.Labels},
			Spec:       *d.Spec.Template.Spec.DeepCopy(),
		}
	}
	bad := pod("net-raw")
	sc := bad.Spec.Containers[0].SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("the container has no securityContext.capabilities")
	}
	sc.Capabilities.Add = []corev1.Capability{"NET_RAW"}
	if err := env.Client.Create(context.Background(), bad, client.DryRunAll); !apierrors.IsForbidden(err) {
		t.Fatalf("pod adding NET_RAW: err = %v, want Forbidden (does %s enforce PodSecurity restricted?)", err, operatorNamespace)
	}
	if err := env.Client.Create(context.Background(), pod("operator"), client.DryRunAll); err != nil {
		t.Errorf("the operator pod is refused: %v", err)
	}
}

// checkOperatorLeaderElection runs every controller as the ServiceAccount,
// with the RBAC from config/, and leader election as cmd/mailfleet sets it
// up: the manager must take the Lease and record the event, which only the
// leader election Role allows, and then reconcile a relay through the
// ClusterRoleBinding.
func checkOperatorLeaderElection(t *testing.T, serviceAccount string) {
	t.Helper()
	// Stopping a leader logs "leader election lost", and reconciles cut
	// short log errors; what matters is checked below, so this manager is
	// quiet unless TEST_VERBOSE asks for its logs.
	logger := ctrl.Log.WithName("leader-election-test")
	if os.Getenv("TEST_VERBOSE") == "" {
		logger = crzap.New(crzap.WriteTo(io.Discard))
	}
	user := rest.ImpersonationConfig{
		UserName: "system:serviceaccount:" + operatorNamespace + ":" + serviceAccount,
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + operatorNamespace, "system:authenticated"},
	}
	checkOperatorAccess(t, user)
	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = user
	opts := env.ManagerOptions()
	opts.LeaderElection = true
	opts.LeaderElectionID = operatorLeaseName
	opts.LeaderElectionNamespace = operatorNamespace
	opts.LeaderElectionReleaseOnCancel = true
	opts.Logger = logger
	mgr, err := ctrl.NewManager(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := controllers.Setup(mgr, render.Options{Image: "mailfleet:test"}, controllers.DomainOptions{}); err != nil {
		t.Fatal(err)
	}
	cancel, stopped := envtestkit.StartInBackground(t, mgr)
	t.Cleanup(func() {
		cancel()
		select {
		case <-stopped:
		case <-time.After(sampleWait):
			// controller-runtime v0.24 waits, spinning, for caches that
			// can never sync; fail rather than hang the package.
			t.Errorf("the manager did not stop within %v: can the ServiceAccount list and watch everything the controllers cache?", sampleWait)
		}
	})
	select {
	case <-mgr.Elected():
	case <-time.After(sampleWait):
		t.Fatalf("not elected within %v: can the ServiceAccount get, create and update Leases in %s?", sampleWait, operatorNamespace)
	}
	lease := &coordinationv1.Lease{}
	if err := env.Get(lease, operatorNamespace, operatorLeaseName); err != nil {
		t.Fatal(err)
	}
	if ptr.Deref(lease.Spec.HolderIdentity, "") == "" {
		t.Errorf("lease %s has no holder", operatorLeaseName)
	}
	envtestkit.Eventually(t, sampleWait, func() error {
		var list corev1.EventList
		if err := env.Client.List(context.Background(), &list, client.InNamespace(operatorNamespace)); err != nil {
			return err
		}
		for _, e := range list.Items {
			if e.InvolvedObject.Kind == "Lease" && e.InvolvedObject.Name == operatorLeaseName && e.Reason == "LeaderElection" {
				return nil
			}
		}
		return fmt.Errorf("no LeaderElection event about Lease %s among %d events: may the ServiceAccount create core/v1 Events?", operatorLeaseName, len(list.Items))
	})

	// The leader reconciles: the relay controller reads the relay, applies
	// its objects (a Role among them, which RBAC lets only a holder of the
	// Role's verbs create) and writes status, all as the ServiceAccount.
	relay := env.CreateRelay(t, env.Namespace(t, nil), "mx")
	env.WaitRelayReady(t, sampleWait, relay, metav1.ConditionFalse, v1.ReasonIssuerNotFound)
}

// checkOperatorAccess asks the API server's authorizer what the
// ServiceAccount may do, before a manager runs as it: the manager's caches
// start before leader election and, without list and watch, never sync,
// and a stuck manager says less than a denied verb.
func checkOperatorAccess(t *testing.T, user rest.ImpersonationConfig) {
	t.Helper()
	wants := []authorizationv1.ResourceAttributes{
		{Group: coordinationv1.GroupName, Resource: "leases", Verb: "get", Namespace: operatorNamespace},
		{Group: coordinationv1.GroupName, Resource: "leases", Verb: "create", Namespace: operatorNamespace},
		{Group: coordinationv1.GroupName, Resource: "leases", Verb: "update", Namespace: operatorNamespace},
		{Group: corev1.GroupName, Resource: "events", Verb: "create", Namespace: operatorNamespace},
	}
	for _, resource := range []string{"smtprelays", "smtpaccounts", "smtplabels"} {
		for _, verb := range []string{"list", "watch"} {
			wants = append(wants, authorizationv1.ResourceAttributes{Group: v1.GroupVersion.Group, Resource: resource, Verb: verb})
		}
	}
	for _, attrs := range wants {
		review := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User: user.UserName, Groups: user.Groups, ResourceAttributes: &attrs,
		}}
		if err := env.Client.Create(context.Background(), review); err != nil {
			t.Fatal(err)
		}
		if !review.Status.Allowed {
			where := "in all namespaces"
			if attrs.Namespace != "" {
				where = "in " + attrs.Namespace
			}
			t.Errorf("%s may not %s %s.%s %s (%s)", user.UserName, attrs.Verb, attrs.Resource, attrs.Group, where, review.Status.Reason)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}
