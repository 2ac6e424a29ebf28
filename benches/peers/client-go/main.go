// Command client-go-peer runs the workloads of Reflex's side-by-side benchmark (examples/bench)
// with client-go, against the same fake API server, and reports its figures the way the Rust
// contenders do: "READY" when the harness should start writing (steady state), then
// "RESULT {json}", then it waits for stdin to close so that the harness can read its peak
// resident set from /proc. Flags mirror the Rust contenders' hidden flags.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
)

const (
	steadyNamespace = "steady"
	writtenAt       = "bench.reflex.dev/written-at"
	seqAnnotation   = "bench.reflex.dev/seq"
	distinctKeys    = 10000
	bound           = 10 * time.Minute
)

type params struct {
	workload    string
	server      string
	pods        int
	namespaces  int
	steadyPods  int
	events      int
	readMs      int
	writeRate   int
	rounds      int
	scaleKeys   int
	scaleRounds int
	kubeconfig  string
	contentType string
	relist      bool
}

type figures map[string]float64

var out = bufio.NewWriter(os.Stdout)

func main() {
	var p params
	flag.StringVar(&p.workload, "workload", "", "sync, steady, workqueue or reads")
	flag.StringVar(&p.server, "server", "", "fake API server URL")
	flag.IntVar(&p.pods, "pods", 0, "Pods across the bench-* namespaces")
	flag.IntVar(&p.namespaces, "namespaces", 0, "number of bench-* namespaces")
	flag.IntVar(&p.steadyPods, "steady-pods", 0, "Pods in the steady namespace")
	flag.IntVar(&p.events, "events", 0, "updates the steady-state writer makes")
	flag.IntVar(&p.readMs, "read-ms", 0, "milliseconds per read phase")
	flag.IntVar(&p.writeRate, "write-rate", 0, "writes per second during reads")
	flag.IntVar(&p.rounds, "rounds", 0, "workqueue rounds (the median counts)")
	flag.IntVar(&p.scaleKeys, "scale-keys", 0, "distinct keys of the workqueue scale rows")
	flag.IntVar(&p.scaleRounds, "scale-rounds", 0, "rounds of the workqueue scale rows (the median counts)")
	flag.StringVar(&p.kubeconfig, "kubeconfig", "", "kubeconfig of a real API server (envtest's); --server is then ignored")
	flag.StringVar(&p.contentType, "content-type", "json", "json, or protobuf (application/vnd.kubernetes.protobuf, JSON accepted as a fallback)")
	flag.BoolVar(&p.relist, "relist", false, "the Rust sync contenders' relist phase (not run by this peer)")
	flag.Parse()
	klog.SetOutput(io.Discard)
	klog.LogToStderr(false)

	var f figures
	var keep any
	var err error
	switch p.workload {
	case "sync", "sync-envtest":
		f, keep, err = initialSync(p)
	case "steady":
		f, keep, err = steadyState(p)
	case "workqueue":
		f, err = queueThroughput(p)
	case "workqueue-scale":
		f, err = queueScale(p)
	case "reads":
		f, keep, err = cacheReads(p)
	default:
		err = fmt.Errorf("unknown workload %q", p.workload)
	}
	if err != nil {
		fmt.Fprintf(out, "ERROR %s\n", err)
	} else {
		b, _ := json.Marshal(f)
		fmt.Fprintf(out, "RESULT %s\n", b)
	}
	out.Flush()
	// Keep the caches alive until the harness has read VmHWM and closed stdin.
	_, _ = io.Copy(io.Discard, os.Stdin)
	_ = keep
	if err != nil {
		os.Exit(1)
	}
}

func clientset(p params) (*kubernetes.Clientset, error) {
	// No client-side throttling (QPS < 0), as kube-rs has none: the comparison is of the
	// machinery, not of a rate limit.
	config := &rest.Config{Host: p.server, QPS: -1}
	if p.kubeconfig != "" {
		c, err := fromKubeconfig(p.kubeconfig)
		if err != nil {
			return nil, err
		}
		config = c
	}
	switch p.contentType {
	case "json", "":
		config.ContentConfig = rest.ContentConfig{ContentType: "application/json"}
	case "protobuf":
		// What kube-controller-manager and the scheduler ask for.
		config.ContentConfig = rest.ContentConfig{
			ContentType:        "application/vnd.kubernetes.protobuf",
			AcceptContentTypes: "application/vnd.kubernetes.protobuf,application/json",
		}
	default:
		return nil, fmt.Errorf("unknown --content-type %q (json or protobuf)", p.contentType)
	}
	config.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { return countingTransport{rt} }
	return kubernetes.NewForConfig(config)
}

// Responses by media type, so that a protobuf row shows the server answered in protobuf (a
// server that cannot falls back to JSON without telling the informer).
var protobufResponses, jsonResponses atomic.Int64

type countingTransport struct{ next http.RoundTripper }

func (t countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	if err == nil {
		switch ct := resp.Header.Get("Content-Type"); {
		case strings.HasPrefix(ct, "application/vnd.kubernetes.protobuf"):
			protobufResponses.Add(1)
		case strings.HasPrefix(ct, "application/json"):
			jsonResponses.Add(1)
		}
	}
	return resp, err
}

// fromKubeconfig reads the one-cluster, one-token kubeconfig that Reflex's envtest harness
// writes (JSON, a CA file and a bearer token): the full clientcmd machinery is not needed for it.
func fromKubeconfig(path string) (*rest.Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var kc struct {
		Clusters []struct {
			Cluster struct {
				Server string `json:"server"`
				CA     string `json:"certificate-authority"`
			} `json:"cluster"`
		} `json:"clusters"`
		Users []struct {
			User struct {
				Token string `json:"token"`
			} `json:"user"`
		} `json:"users"`
	}
	if err := json.Unmarshal(raw, &kc); err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	if len(kc.Clusters) != 1 || len(kc.Users) != 1 {
		return nil, fmt.Errorf("kubeconfig %s: expected one cluster and one user", path)
	}
	return &rest.Config{
		Host:            kc.Clusters[0].Cluster.Server,
		BearerToken:     kc.Users[0].User.Token,
		TLSClientConfig: rest.TLSClientConfig{CAFile: kc.Clusters[0].Cluster.CA},
		QPS:             -1,
	}, nil
}

func initialSync(p params) (figures, any, error) {
	cs, err := clientset(p)
	if err != nil {
		return nil, nil, err
	}
	factory := informers.NewSharedInformerFactory(cs, 0)
	informer := factory.Core().V1().Pods().Informer()
	stop := make(chan struct{})
	start := time.Now()
	factory.Start(stop)
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		return nil, nil, fmt.Errorf("not synced within %s", bound)
	}
	elapsed := time.Since(start)
	n := len(informer.GetStore().ListKeys())
	f := figures{
		"synced_s":           elapsed.Seconds(),
		"objects":            float64(n),
		"protobuf_responses": float64(protobufResponses.Load()),
		"json_responses":     float64(jsonResponses.Load()),
	}
	return f, []any{factory, informer, stop}, nil
}

// recorder keeps the latencies of stamped updates seen by the first handler.
type recorder struct {
	mu           sync.Mutex
	expected     int
	latencies    []int64
	firstWritten int64
	lastSeen     int64
	sawLast      bool
	done         chan struct{}
	closed       bool
}

func (r *recorder) record(pod *corev1.Pod) {
	now := time.Now().UnixNano()
	w, err1 := strconv.ParseInt(pod.Annotations[writtenAt], 10, 64)
	seq, err2 := strconv.Atoi(pod.Annotations[seqAnnotation])
	if err1 != nil || err2 != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.latencies) == 0 || w < r.firstWritten {
		r.firstWritten = w
	}
	r.latencies = append(r.latencies, now-w)
	r.lastSeen = now
	if seq+1 == r.expected {
		r.sawLast = true
	}
	if (r.sawLast || len(r.latencies) >= r.expected) && !r.closed {
		r.closed = true
		close(r.done)
	}
}

func (r *recorder) figures() (figures, error) {
	timedOut := 0.0
	select {
	case <-r.done:
	case <-time.After(5 * time.Minute):
		timedOut = 1
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(r.latencies)
	if n == 0 {
		return nil, fmt.Errorf("no stamped event seen")
	}
	sort.Slice(r.latencies, func(i, j int) bool { return r.latencies[i] < r.latencies[j] })
	pct := func(p float64) float64 {
		i := int(float64(n)*p+0.999999) - 1
		if i < 0 {
			i = 0
		}
		if i >= n {
			i = n - 1
		}
		return float64(r.latencies[i]) / 1e6
	}
	span := float64(r.lastSeen-r.firstWritten) / 1e9
	eps := 0.0
	if span > 0 {
		eps = float64(n) / span
	}
	return figures{"events": float64(n), "events_per_s": eps, "p50_ms": pct(0.5), "p99_ms": pct(0.99), "timed_out": timedOut}, nil
}

func steadyState(p params) (figures, any, error) {
	cs, err := clientset(p)
	if err != nil {
		return nil, nil, err
	}
	factory := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithNamespace(steadyNamespace))
	informer := factory.Core().V1().Pods().Informer()
	queue := workqueue.NewTypedRateLimitingQueue[string](workqueue.DefaultTypedControllerRateLimiter[string]())
	rec := &recorder{expected: p.events, done: make(chan struct{})}
	for i := 0; i < 4; i++ {
		first := i == 0
		_, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: func(obj any) {
				if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
					queue.Add(key)
				}
			},
			UpdateFunc: func(_, obj any) {
				if first {
					if pod, ok := obj.(*corev1.Pod); ok {
						rec.record(pod)
					}
				}
				if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
					queue.Add(key)
				}
			},
		})
		if err != nil {
			return nil, nil, err
		}
	}
	go func() {
		for {
			key, shutdown := queue.Get()
			if shutdown {
				return
			}
			queue.Forget(key)
			queue.Done(key)
		}
	}()
	stop := make(chan struct{})
	factory.Start(stop)
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		return nil, nil, fmt.Errorf("not synced within %s", bound)
	}
	fmt.Fprintln(out, "READY")
	out.Flush()
	f, err := rec.figures()
	queue.ShutDown()
	return f, []any{factory, informer, stop}, err
}

func keys() []int {
	return keysOver(distinctKeys)
}

// keysOver is every one of n keys added twice, interleaved as in the Rust contenders.
func keysOver(n int) []int {
	ks := make([]int, 0, 2*n)
	for k := 0; k < n; k++ {
		ks = append(ks, k, (k+n/2)%n)
	}
	return ks
}

func queueRound(ks []int, distinct int, workers int) (time.Duration, error) {
	q := workqueue.NewTyped[int]()
	var handled atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k, shutdown := q.Get()
				if shutdown {
					return
				}
				_ = k
				q.Done(k)
				handled.Add(1)
			}
		}()
	}
	for _, k := range ks {
		q.Add(k)
	}
	q.ShutDownWithDrain()
	elapsed := time.Since(start)
	wg.Wait()
	if handled.Load() < int64(distinct) {
		return 0, fmt.Errorf("only %d items handled", handled.Load())
	}
	return elapsed, nil
}

func queueThroughput(p params) (figures, error) {
	return queueFigures(keys(), distinctKeys, []int{1, 2, 8}, p.rounds)
}

// queueScale is the scale rows: the same pattern over scaleKeys keys at 8 and 1000 workers.
func queueScale(p params) (figures, error) {
	n := p.scaleKeys
	if n < 2 {
		n = 2
	}
	f, err := queueFigures(keysOver(n), n, []int{8, 1000}, p.scaleRounds)
	if err != nil {
		return nil, err
	}
	if f["w8_adds_per_s"] > 0 {
		f["w1000_over_w8"] = f["w1000_adds_per_s"] / f["w8_adds_per_s"]
	}
	return f, nil
}

func queueFigures(ks []int, distinct int, workerCounts []int, rounds int) (figures, error) {
	f := figures{}
	if rounds < 1 {
		rounds = 1
	}
	for _, workers := range workerCounts {
		times := make([]time.Duration, 0, rounds)
		for r := 0; r < rounds; r++ {
			t, err := queueRound(ks, distinct, workers)
			if err != nil {
				return nil, err
			}
			times = append(times, t)
		}
		sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
		f[fmt.Sprintf("w%d_adds_per_s", workers)] = float64(len(ks)) / times[len(times)/2].Seconds()
	}
	return f, nil
}

func spread(i, n int) int {
	if n == 0 {
		return 0
	}
	return int((uint64(i) * 2654435761) % uint64(n))
}

// perSecond runs op for ms milliseconds and returns operations per second.
func perSecond(ms int, op func(int) int) float64 {
	if ms < 1 {
		ms = 1
	}
	limit := time.Duration(ms) * time.Millisecond
	start := time.Now()
	ops, sink := 0, 0
	for {
		for j := 0; j < 64; j++ {
			sink += op(ops)
			ops++
		}
		if time.Since(start) >= limit {
			break
		}
	}
	_ = sink
	return float64(ops) / time.Since(start).Seconds()
}

// Rounds of each read phase and the small store size, as examples/bench/reads.rs.
const readRounds = 5
const smallStore = 10000

func medianOf(xs []float64) float64 {
	sort.Float64s(xs)
	return xs[len(xs)/2]
}

func cacheReads(p params) (figures, any, error) {
	cs, err := clientset(p)
	if err != nil {
		return nil, nil, err
	}
	list, err := cs.CoreV1().Pods("").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		return nil, nil, err
	}
	all := make([]*corev1.Pod, len(list.Items))
	for i := range list.Items {
		all[i] = &list.Items[i]
	}
	sizes := []int{len(all)}
	if len(all) > smallStore {
		sizes = []int{smallStore, len(all)}
	}
	namespaces := make([]string, 0, p.namespaces)
	for i := 0; i < p.namespaces || i == 0; i++ {
		namespaces = append(namespaces, fmt.Sprintf("bench-%03d", i))
	}
	roundMs := p.readMs / readRounds
	if roundMs < 1 {
		roundMs = 1
	}
	f := figures{}
	var writes atomic.Int64
	var keep []any
	for _, size := range sizes {
		// Every (N/size)-th Pod, as the Rust contenders take them.
		step := len(all) / size
		if step < 1 {
			step = 1
		}
		pods := make([]*corev1.Pod, 0, size)
		for i := 0; i < len(all) && len(pods) < size; i += step {
			pods = append(pods, all[i])
		}
		indexer := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
		ks := make([]string, len(pods))
		for i, pod := range pods {
			if err := indexer.Add(pod); err != nil {
				return nil, nil, err
			}
			ks[i], _ = cache.MetaNamespaceKeyFunc(pod)
		}
		var stop atomic.Bool
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			rate := p.writeRate
			if rate < 1 {
				rate = 1
			}
			perTick := rate / 100
			if perTick < 1 {
				perTick = 1
			}
			tick := time.Duration(float64(time.Second) * float64(perTick) / float64(rate))
			next := time.Now()
			for i := 0; !stop.Load() && len(pods) > 0; {
				for j := 0; j < perTick; j++ {
					pod := pods[i%len(pods)].DeepCopy()
					pod.ResourceVersion = fmt.Sprintf("w%d", i)
					_ = indexer.Update(pod)
					writes.Add(1)
					i++
				}
				next = next.Add(tick)
				if d := time.Until(next); d > 0 {
					time.Sleep(d)
				}
			}
		}()
		var gets, lists []float64
		for r := 0; r < readRounds; r++ {
			gets = append(gets, perSecond(roundMs, func(i int) int {
				if _, ok, _ := indexer.GetByKey(ks[spread(i, len(ks))]); ok {
					return 1
				}
				return 0
			}))
			lists = append(lists, perSecond(roundMs, func(i int) int {
				objs, _ := indexer.ByIndex(cache.NamespaceIndex, namespaces[i%len(namespaces)])
				return len(objs)
			}))
		}
		stop.Store(true)
		wg.Wait()
		suffix := ""
		if size < len(all) {
			suffix = "_10k"
		}
		f["get_per_s"+suffix] = medianOf(gets)
		f["list_ns_per_s"+suffix] = medianOf(lists)
		keep = append(keep, indexer)
	}
	f["writes"] = float64(writes.Load())
	return f, []any{keep, all}, nil
}
