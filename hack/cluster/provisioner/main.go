// Command provisioner is the single-node test cluster's volume provisioner
// (hack/cluster): it gives every PersistentVolumeClaim of the default
// StorageClass `mailfleet-local` (provisioner mailfleet.test/hostpath) a
// hostPath PersistentVolume in a directory of its own under
// bin/cluster/state/volumes, and deletes the directory and the volume once the
// claim is gone. The chart's NATS StatefulSet needs a volume per replica, and
// e2e tests install and uninstall it many times; statically created volumes
// would run out, since a released one is never reused.
//
// It runs on the host next to the kubelet (up.sh starts it), because it
// creates the directories there. hostPath volumes ignore a pod's fsGroup, so
// each directory is world-writable: the pods run as non-root users of their
// own choosing. It is for the test cluster only.
package main

import (
	"context"
	"flag"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

const (
	// provisionerName is the StorageClass's provisioner; the PV controller
	// writes it into a claim's annotation when the claim is ours to serve.
	provisionerName  = "mailfleet.test/hostpath"
	annProvisioner   = "volume.kubernetes.io/storage-provisioner"
	annProvisionedBy = "pv.kubernetes.io/provisioned-by"
)

// pvName is what volume names look like; the directory of a volume is named
// after it, so nothing else may be removed.
var pvName = regexp.MustCompile(`^pvc-[0-9a-f-]{36}$`)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the provisioner's identity")
	dir := flag.String("dir", "", "directory holding the volumes' directories")
	flag.Parse()
	if *kubeconfig == "" || *dir == "" || !filepath.IsAbs(*dir) {
		log.Fatal("provisioner: -kubeconfig and an absolute -dir are required")
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		log.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		log.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	p := &provisioner{client: client, dir: *dir}
	// The periodic resync retries whatever failed before.
	factory := informers.NewSharedInformerFactory(client, 15*time.Second)
	claims := factory.Core().V1().PersistentVolumeClaims().Informer()
	volumes := factory.Core().V1().PersistentVolumes().Informer()
	if _, err := claims.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { p.claim(ctx, o) },
		UpdateFunc: func(_, o any) { p.claim(ctx, o) },
	}); err != nil {
		log.Fatal(err)
	}
	if _, err := volumes.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { p.volume(ctx, o) },
		UpdateFunc: func(_, o any) { p.volume(ctx, o) },
	}); err != nil {
		log.Fatal(err)
	}
	factory.Start(ctx.Done())
	log.Printf("provisioner: serving %s in %s", provisionerName, *dir)
	<-ctx.Done()
	factory.Shutdown()
}

type provisioner struct {
	client kubernetes.Interface
	dir    string
}

// claim creates the volume of a pending claim that is ours. The volume is
// pre-bound to the claim, so the PV controller binds exactly this pair.
func (p *provisioner) claim(ctx context.Context, o any) {
	c, ok := o.(*corev1.PersistentVolumeClaim)
	if !ok || c.Spec.VolumeName != "" || c.Status.Phase != corev1.ClaimPending ||
		c.Annotations[annProvisioner] != provisionerName {
		return
	}
	if c.Spec.VolumeMode != nil && *c.Spec.VolumeMode != corev1.PersistentVolumeFilesystem {
		log.Printf("provisioner: %s/%s: only Filesystem volumes are supported", c.Namespace, c.Name)
		return
	}
	name := "pvc-" + string(c.UID)
	if _, err := p.client.CoreV1().PersistentVolumes().Get(ctx, name, metav1.GetOptions{}); err == nil {
		return
	}
	path := filepath.Join(p.dir, name)
	if err := os.MkdirAll(path, 0o777); err != nil {
		log.Printf("provisioner: %v", err)
		return
	}
	// MkdirAll's mode is cut by the umask; the pod's user needs to write.
	if err := os.Chmod(path, 0o777); err != nil {
		log.Printf("provisioner: %v", err)
		return
	}
	class := ""
	if c.Spec.StorageClassName != nil {
		class = *c.Spec.StorageClassName
	}
	hostPathType := corev1.HostPathDirectory
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Annotations: map[string]string{annProvisionedBy: provisionerName},
		},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: c.Spec.Resources.Requests[corev1.ResourceStorage]},
			AccessModes:                   c.Spec.AccessModes,
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
			StorageClassName:              class,
			ClaimRef: &corev1.ObjectReference{
				Kind: "PersistentVolumeClaim", APIVersion: "v1",
				Namespace: c.Namespace, Name: c.Name, UID: c.UID,
			},
			PersistentVolumeSource: corev1.PersistentVolumeSource{
				HostPath: &corev1.HostPathVolumeSource{Path: path, Type: &hostPathType},
			},
		},
	}
	if _, err := p.client.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		log.Printf("provisioner: creating %s for %s/%s: %v", name, c.Namespace, c.Name, err)
		return
	}
	log.Printf("provisioner: created %s for %s/%s", name, c.Namespace, c.Name)
}

// volume deletes a volume of ours, and its directory, once its claim is gone.
func (p *provisioner) volume(ctx context.Context, o any) {
	v, ok := o.(*corev1.PersistentVolume)
	if !ok || v.Annotations[annProvisionedBy] != provisionerName || !pvName.MatchString(v.Name) ||
		v.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete ||
		(v.Status.Phase != corev1.VolumeReleased && v.Status.Phase != corev1.VolumeFailed) {
		return
	}
	if err := os.RemoveAll(filepath.Join(p.dir, v.Name)); err != nil {
		log.Printf("provisioner: %v", err)
		return
	}
	err := p.client.CoreV1().PersistentVolumes().Delete(ctx, v.Name, metav1.DeleteOptions{
		Preconditions: &metav1.Preconditions{UID: &v.UID},
	})
	switch {
	case err == nil:
		log.Printf("provisioner: deleted %s", v.Name)
	case !apierrors.IsNotFound(err): // not found: an earlier event did it
		log.Printf("provisioner: deleting %s: %v", v.Name, err)
	}
}
