from fedrun.cli.help import main

main()
