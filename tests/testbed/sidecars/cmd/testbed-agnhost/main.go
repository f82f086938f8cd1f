// testbed-agnhost answers the two agnhost subcommands Kubernetes' storage e2e specs run, under
// the image name the suite expects: `pause`, and `mounttest` with the flags the subPath specs
// pass. The bed cannot pull the upstream agnhost image, and the Go module proxy
// does not serve its module. Behaviour and output lines follow agnhost's documented contract:
//
//	mounttest --new_file_0644=F   write "mount-tester new file\n" to F (mode 0644), then print it
//	mounttest --new_file_0666=F   the same with mode 0666 (also 0660 and 0777)
//	mounttest --file_mode=F       print `mode of file "F": <mode>`
//	mounttest --file_perm=F       print `perms of file "F": <perm>`
//	mounttest --file_owner=F      print `owner UID of "F": <uid>` and `owner GID of "F": <gid>`
//	mounttest --fs_type=F         print `mount type of "F": <magic>`
//	mounttest --file_content=F    print `content of file "F": <content>`
//	mounttest --file_content_in_loop=F --retry_time=N
//	                              read F every 2 s for N s until it holds the new-file content
//
// Writes happen before reads, so one call can write a file and read it back. Any failure makes
// the exit code 1, after every requested step ran.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

const newFileContent = "mount-tester new file\n"

func main() {
	if len(os.Args) < 2 {
		pause()
	}
	switch os.Args[1] {
	case "pause":
		pause()
	case "mounttest":
		os.Exit(mounttest(os.Args[2:]))
	default:
		fmt.Fprintf(os.Stderr, "testbed-agnhost: %q is not one of the subcommands the bed provides (pause, mounttest)\n", os.Args[1])
		os.Exit(2)
	}
}

func pause() {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	<-signals
	os.Exit(0)
}

func mounttest(args []string) int {
	flags := flag.NewFlagSet("mounttest", flag.ContinueOnError)
	fsType := flags.String("fs_type", "", "path to print the filesystem type of")
	fileMode := flags.String("file_mode", "", "path to print the mode of")
	filePerm := flags.String("file_perm", "", "path to print the permission bits of")
	fileOwner := flags.String("file_owner", "", "path to print the owner of")
	newFiles := map[os.FileMode]*string{
		0o644: flags.String("new_file_0644", "", "file to write with mode 0644 and read back"),
		0o666: flags.String("new_file_0666", "", "file to write with mode 0666 and read back"),
		0o660: flags.String("new_file_0660", "", "file to write with mode 0660 and read back"),
		0o777: flags.String("new_file_0777", "", "file to write with mode 0777 and read back"),
	}
	content := flags.String("file_content", "", "file to print")
	contentInLoop := flags.String("file_content_in_loop", "", "file to read until it holds the new-file content")
	retrySeconds := flags.Int("retry_time", 180, "seconds to keep reading --file_content_in_loop")
	breakOnExpected := flags.Bool("break_on_expected_content", true, "stop reading once the content is as expected")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	// Modes must be exactly what the flags say, whatever the container's umask.
	syscall.Umask(0)

	failed := false
	step := func(err error) {
		if err != nil {
			failed = true
		}
	}
	if *fsType != "" {
		step(printFsType(*fsType))
	}
	for _, mode := range []os.FileMode{0o644, 0o666, 0o660, 0o777} {
		if path := *newFiles[mode]; path != "" {
			step(writeNewFile(path, mode))
		}
	}
	if *fileMode != "" {
		step(printStat(*fileMode, func(info os.FileInfo) string {
			return fmt.Sprintf("mode of file %q: %v", *fileMode, info.Mode())
		}))
	}
	if *filePerm != "" {
		step(printStat(*filePerm, func(info os.FileInfo) string {
			return fmt.Sprintf("perms of file %q: %v", *filePerm, info.Mode().Perm())
		}))
	}
	if *fileOwner != "" {
		step(printOwner(*fileOwner))
	}
	if *content != "" {
		step(printContent(*content))
	}
	if *contentInLoop != "" {
		step(readUntilExpected(*contentInLoop, time.Duration(*retrySeconds)*time.Second, *breakOnExpected))
	}
	if failed {
		return 1
	}
	return 0
}

func writeNewFile(path string, mode os.FileMode) error {
	if err := os.WriteFile(path, []byte(newFileContent), mode); err != nil {
		fmt.Printf("error writing new file %q: %v\n", path, err)
		return err
	}
	return printContent(path)
}

func printContent(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		fmt.Printf("error reading file content for %q: %v\n", path, err)
		return err
	}
	fmt.Printf("content of file %q: %v\n", path, string(data))
	return nil
}

func printStat(path string, line func(os.FileInfo) string) error {
	info, err := os.Stat(path)
	if err != nil {
		fmt.Printf("error reading file info of %q: %v\n", path, err)
		return err
	}
	fmt.Println(line(info))
	return nil
}

func printOwner(path string) error {
	info, err := os.Stat(path)
	if err != nil {
		fmt.Printf("error reading file info of %q: %v\n", path, err)
		return err
	}
	stat := info.Sys().(*syscall.Stat_t)
	fmt.Printf("owner UID of %q: %d\n", path, stat.Uid)
	fmt.Printf("owner GID of %q: %d\n", path, stat.Gid)
	return nil
}

func printFsType(path string) error {
	var fs syscall.Statfs_t
	if err := syscall.Statfs(path, &fs); err != nil {
		fmt.Printf("error reading the filesystem of %q: %v\n", path, err)
		return err
	}
	fmt.Printf("mount type of %q: %v\n", path, fs.Type)
	return nil
}

func readUntilExpected(path string, budget time.Duration, stopWhenExpected bool) error {
	var err error
	for start := time.Now(); time.Since(start) < budget; time.Sleep(2 * time.Second) {
		var data []byte
		data, err = os.ReadFile(path)
		if err != nil {
			fmt.Printf("Error reading file %s: %v, retrying\n", path, err)
			continue
		}
		fmt.Printf("content of file %q: %v\n", path, string(data))
		if stopWhenExpected {
			if string(data) == newFileContent {
				return nil
			}
			fmt.Printf("Unexpected content. Expected: %s. Retrying", newFileContent)
		}
	}
	return err
}
