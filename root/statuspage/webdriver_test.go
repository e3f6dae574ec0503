package statuspage_test

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/semnet/semnet/shared/netnstest"
)

// browser is a headless Chromium driven through chromedriver with the W3C WebDriver
// protocol (plain JSON over HTTP), enough of it for these tests: navigate, find elements,
// read their text, attributes and rects, type, click, run a script, take a screenshot.
type browser struct {
	t    testing.TB
	base string // http://127.0.0.1:port/session/<id>
	hc   *http.Client
}

// webElementKey is the key of an element reference in WebDriver answers (W3C spec §12).
const webElementKey = "element-6066-11e4-a52e-4f735466cecf"

// startedOnPort matches chromedriver's line naming the port it took.
var startedOnPort = regexp.MustCompile(`started successfully on port (\d+)`)

// waitTimeout bounds every wait for the page: generous, because the machine is shared
// and Chromium's first start is slow; waits poll, so a fast run stays fast.
const waitTimeout = 45 * time.Second

// startBrowser starts chromedriver on a free loopback port and opens a Chromium session
// with a 1280x900 window. Both are killed when the test ends. It skips (fails under CI)
// when chromium or chromedriver is missing.
func startBrowser(t *testing.T) *browser {
	t.Helper()
	netnstest.RequireTool(t, "chromium", "chromium")
	netnstest.RequireTool(t, "chromedriver", "chromium-driver")
	chromium, _ := exec.LookPath("chromium")

	// Chromium writes to its profile until it exits, so the profile is not a t.TempDir
	// (whose removal would race with it): it is removed after the processes are gone.
	profile, err := os.MkdirTemp("", "semnet-statuspage-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(profile, "chromedriver.log")
	// Port 0: chromedriver takes a free loopback port and says which.
	cmd := exec.Command("chromedriver", "--port=0", "--log-path="+logPath)
	// Its own process group, so that cleanup ends chromedriver and every Chromium process
	// it started, and nothing else.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(profile)
		t.Fatalf("start chromedriver: %v", err)
	}
	ports := make(chan int, 1)
	go func() {
		defer close(ports)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := startedOnPort.FindStringSubmatch(sc.Text()); m != nil {
				port, _ := strconv.Atoi(m[1])
				ports <- port
				_, _ = io.Copy(io.Discard, stdout) // read on, so chromedriver never blocks writing
				return
			}
		}
	}()
	b := &browser{t: t, hc: &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{Proxy: nil}}}
	t.Cleanup(func() {
		if b.base != "" {
			_ = b.call(http.MethodDelete, "", nil, nil) // closes Chromium properly
		}
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		if t.Failed() {
			if log, err := os.ReadFile(logPath); err == nil {
				t.Logf("chromedriver log (tail):\n%s", tail(string(log), 4000))
			}
		}
		// Chromium's processes may take a moment to go after the group is killed.
		for range 50 {
			if os.RemoveAll(profile) == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("could not remove Chromium profile %s", profile)
	})

	var driver string
	select {
	case port, ok := <-ports:
		if !ok {
			t.Fatal("chromedriver exited without saying its port")
		}
		driver = fmt.Sprintf("http://127.0.0.1:%d", port)
	case <-time.After(waitTimeout):
		t.Fatalf("chromedriver did not say its port within %v", waitTimeout)
	}
	ready := func() error {
		var st struct {
			Ready bool `json:"ready"`
		}
		if err := b.do(http.MethodGet, driver+"/status", nil, &st); err != nil {
			return err
		}
		if !st.Ready {
			return errors.New("chromedriver not ready")
		}
		return nil
	}
	b.wait("chromedriver to answer", func() error { return ready() })

	args := []string{
		"--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
		"--user-data-dir=" + filepath.Join(profile, "profile"),
		"--force-device-scale-factor=1", "--hide-scrollbars", "--disable-dev-shm-usage",
		"--no-first-run", "--no-default-browser-check", "--disable-extensions",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-default-apps", "--disable-client-side-phishing-detection", "--no-pings",
		"--metrics-recording-only", "--disable-features=Translate,OptimizationHints,MediaRouter",
		// Nothing but loopback is reachable: every other connection goes to a proxy on
		// a closed loopback port, and no host name resolves.
		"--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
	}
	caps := map[string]any{"capabilities": map[string]any{"alwaysMatch": map[string]any{
		"browserName":        "chrome",
		"goog:chromeOptions": map[string]any{"binary": chromium, "args": args},
	}}}
	var sess struct {
		SessionID string `json:"sessionId"`
	}
	if err := b.do(http.MethodPost, driver+"/session", caps, &sess); err != nil {
		t.Fatalf("start a Chromium session: %v", err)
	}
	b.base = driver + "/session/" + sess.SessionID
	return b
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// do sends one WebDriver request and decodes the answer's "value" into out.
func (b *browser) do(method, url string, in, out any) error {
	var body io.Reader
	if in != nil {
		j, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := b.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	var answer struct {
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(raw, &answer); err != nil {
		return fmt.Errorf("WebDriver %s %s: %s: %s", method, url, resp.Status, tail(string(raw), 500))
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error   string `json:"error"`
			Message string `json:"message"`
		}
		_ = json.Unmarshal(answer.Value, &e)
		return &driverError{Code: e.Error, Message: e.Message}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(answer.Value, out); err != nil {
		return fmt.Errorf("WebDriver %s %s: decode %s: %w", method, url, tail(string(answer.Value), 300), err)
	}
	return nil
}

type driverError struct{ Code, Message string }

func (e *driverError) Error() string {
	return "WebDriver: " + e.Code + ": " + strings.SplitN(e.Message, "\n", 2)[0]
}

// call sends a command of the session: path is relative to /session/{id}.
func (b *browser) call(method, path string, in, out any) error {
	return b.do(method, b.base+path, in, out)
}

// must is call that fails the test on error.
func (b *browser) must(method, path string, in, out any) {
	b.t.Helper()
	if err := b.call(method, path, in, out); err != nil {
		b.t.Fatal(err)
	}
}

// wait polls f until it returns nil, failing the test with f's last error after
// waitTimeout.
func (b *browser) wait(what string, f func() error) {
	b.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("waited %v for %s: %v", waitTimeout, what, err)
		}
		time.Sleep(150 * time.Millisecond)
	}
}

func (b *browser) open(url string) {
	b.t.Helper()
	b.must(http.MethodPost, "/url", map[string]string{"url": url}, nil)
}

func (b *browser) currentURL() string {
	b.t.Helper()
	var u string
	b.must(http.MethodGet, "/url", nil, &u)
	return u
}

// elements returns the references of the elements matching a CSS selector (none is not
// an error).
func (b *browser) elements(css string) ([]string, error) {
	var refs []map[string]string
	if err := b.call(http.MethodPost, "/elements", map[string]string{"using": "css selector", "value": css}, &refs); err != nil {
		return nil, err
	}
	out := make([]string, len(refs))
	for i, r := range refs {
		out[i] = r[webElementKey]
	}
	return out, nil
}

// element returns the one element matching css, or an error when there is none.
func (b *browser) element(css string) (string, error) {
	els, err := b.elements(css)
	if err != nil {
		return "", err
	}
	if len(els) != 1 {
		return "", fmt.Errorf("%d elements match %s, want 1", len(els), css)
	}
	return els[0], nil
}

// text returns the rendered text of the element matching css.
func (b *browser) text(css string) (string, error) {
	el, err := b.element(css)
	if err != nil {
		return "", err
	}
	var s string
	err = b.call(http.MethodGet, "/element/"+el+"/text", nil, &s)
	return s, err
}

func (b *browser) attribute(el, name string) (string, error) {
	var s *string
	if err := b.call(http.MethodGet, "/element/"+el+"/attribute/"+name, nil, &s); err != nil {
		return "", err
	}
	if s == nil {
		return "", fmt.Errorf("element has no attribute %s", name)
	}
	return *s, nil
}

func (b *browser) displayed(css string) (bool, error) {
	el, err := b.element(css)
	if err != nil {
		return false, err
	}
	var ok bool
	err = b.call(http.MethodGet, "/element/"+el+"/displayed", nil, &ok)
	return ok, err
}

type rect struct{ X, Y, Width, Height float64 }

func (b *browser) rect(el string) rect {
	b.t.Helper()
	var r rect
	b.must(http.MethodGet, "/element/"+el+"/rect", nil, &r)
	return r
}

func (b *browser) typeInto(css, text string) {
	b.t.Helper()
	el, err := b.element(css)
	if err != nil {
		b.t.Fatal(err)
	}
	b.must(http.MethodPost, "/element/"+el+"/value", map[string]string{"text": text}, nil)
}

func (b *browser) click(css string) {
	b.t.Helper()
	el, err := b.element(css)
	if err != nil {
		b.t.Fatal(err)
	}
	b.must(http.MethodPost, "/element/"+el+"/click", map[string]any{}, nil)
}

// script runs JavaScript in the page and decodes its return value into out.
func (b *browser) script(js string, out any) {
	b.t.Helper()
	b.must(http.MethodPost, "/execute/sync", map[string]any{"script": js, "args": []any{}}, out)
}

// screenshot returns a PNG of the viewport.
func (b *browser) screenshot() []byte {
	b.t.Helper()
	var s string
	b.must(http.MethodGet, "/screenshot", nil, &s)
	png, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		b.t.Fatalf("decode screenshot: %v", err)
	}
	return png
}
