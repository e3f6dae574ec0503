package listenaddr

import "testing"

func TestIsLoopback(t *testing.T) {
	for listen, want := range map[string]bool{
		"127.0.0.1:10099": true, "[::1]:10003": true, "localhost:1": true, "127.8.9.1:0": true,
		":10099": false, "0.0.0.0:1": false, "10.0.0.1:1": false, "[::]:1": false, "127.0.0.1": false, "": false,
	} {
		if got := IsLoopback(listen); got != want {
			t.Errorf("IsLoopback(%q) = %v, want %v", listen, got, want)
		}
	}
	if Port(":10003", ":1") != ":10003" || Port("nonsense", ":1") != ":1" {
		t.Error("Port")
	}
}
