from hallurun.cli import main

main()
